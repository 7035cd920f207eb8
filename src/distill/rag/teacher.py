"""The RAG teacher: retrieve, pick the fewest chunks that carry the answer, answer with citations.

The answer itself comes from a generator (generators.py), chosen by `teacher.backend`: `extractive`
(default, no LLM), `transformers` (a local causal LM) or `openai` (an OpenAI-compatible server);
`http` is a team's own RAG instead of this one (http_teacher.py).

    teacher = Teacher.from_workspace(workspace, config)
    answer = teacher.answer("How long is the refund window?", scope="billing")
    answer.answer, answer.citations, answer.refused

Evidence is a budget, not a dump: at most `context_chunks` chunks within `context_words`
words, duplicates dropped, and chunks flagged as prompt injection left out (by default). Whatever is
shown is fenced as data inside `<evidence>` tags, with `<` and `>` escaped so no chunk can close
the fence or smuggle a chat-template role tag. Every answer carries its confidence signals: the
top dense score and its margin, retriever agreement, mean token log-probability (LLM backends) and
groundedness (the share of answer words found in the cited chunks).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import numpy as np

from distill.config import Config, FeedbackConfig, TeacherConfig
from distill.llm.local import Generation
from distill.rag import answerability
from distill.rag.answers import Answer, cite, groundedness, text_words, words
from distill.rag.conversation import Turn
from distill.rag.corpus import compile_patterns, first_match
from distill.rag.generators import (
    DECLINE,
    EvidenceSentences,
    ExtractiveGenerator,
    Generator,
    build_messages,
    make_generator,
)
from distill.rag.http_teacher import HttpTeacher
from distill.rag.index import Retrieval, Retriever, dense_meta
from distill.rag.rerank import Reranker
from distill.store.feedback import RatedEvidence, Verdicts, answer_key
from distill.store.segments import has_traces
from distill.store.traces import TraceStore
from distill.workspace import Workspace


def select_evidence(retrieval: Retrieval, config: TeacherConfig) -> list[dict]:
    """The fewest chunks that carry the answer: best first, deduplicated, within the word budget."""
    chosen, seen, budget = [], set(), config.context_words
    for hit in retrieval.hits:
        chunk = hit.chunk
        if chunk["content_hash"] in seen or (config.drop_flagged_chunks and chunk["injection_flag"]):
            continue
        size = len(chunk["text"].split())
        if chosen and size > budget:
            break
        chosen.append(chunk)
        seen.add(chunk["content_hash"])
        budget -= size
        if len(chosen) >= config.context_chunks:
            break
    return chosen


class AnyTeacher(Protocol):
    """What collect, the router and the evaluation use of a teacher: `Teacher` (distill's own RAG)
    or `HttpTeacher` (a team's own RAG service), as `TEACHERS` picks by `teacher.backend`."""

    retriever: Any  # what it answers from: a `Retriever`, or the contexts a team's RAG returned (`ExternalDocuments`)
    generator: Any  # what wrote the answers: its `backend` and `model_name` go on every trace
    threshold: float | None  # the answerability below which it refuses (None: the team's RAG decides)

    def answer(self, query: str, scope: str | None = None, turn: Turn | None = None) -> Answer: ...

    def answer_batch(self, queries: list[tuple[str, str | None]]) -> list[Answer]: ...

    def use_feedback(self, verdicts: Verdicts, config: FeedbackConfig) -> None: ...

    def reloaded(self, workspace: Workspace, config: Config) -> "AnyTeacher": ...


class Teacher:
    """Retrieval + a generator + the bookkeeping that makes every answer auditable.

    `threshold` is the answerability score below which it refuses (see answerability.py); by
    default `teacher.min_answerability`, or the workspace's calibrated one via `from_workspace`.
    `reranker` (rerank.py; the workspace's switched-on one via `from_workspace`) reorders each
    retrieval's best hits before the evidence is chosen."""

    def __init__(self, retriever: Retriever, config: TeacherConfig, generator: Generator,
                 threshold: float | None = None, injection_patterns: list[str] = (), method: str = "setting",
                 reranker: Reranker | None = None):
        self.retriever, self.config, self.generator, self.reranker = retriever, config, generator, reranker
        self.threshold = config.min_answerability if threshold is None else threshold
        self.method = method  # how the threshold was set: an answerability.METHODS entry, or 'setting'
        self.injection = compile_patterns(list(injection_patterns))
        self.sentences = getattr(generator, "sentences", None) or EvidenceSentences(retriever.encode)
        self.rated: RatedEvidence | None = None  # users' verdicts on the chunks it answered from (use_feedback)

    @classmethod
    def from_workspace(cls, workspace: Workspace, config: Config) -> "AnyTeacher":
        """The workspace's teacher (`TEACHERS`): with `teacher.backend = "http"`, the team's own RAG
        service; with any other backend, distill's own RAG answering with that generator."""
        return TEACHERS.get(config.teacher.backend, cls.own_rag)(workspace, config)

    @classmethod
    def own_rag(cls, workspace: Workspace, config: Config) -> "Teacher":
        retriever = Retriever(workspace, config.index)
        threshold, method = workspace_threshold(workspace, config.teacher)
        return cls(retriever, config.teacher, make_generator(config.teacher, retriever, workspace), threshold,
                   config.corpus.injection_patterns, method, Reranker.from_workspace(workspace, config))

    def reloaded(self, workspace: Workspace, config: Config) -> "Teacher":
        """This teacher over the workspace's current corpus generation and answerability threshold;
        an LLM generator is kept (loading it again would cost seconds), the extractive one follows
        the new embedder."""
        retriever = Retriever(workspace, config.index)
        generator = self.generator if self.generator.backend != "extractive" else \
            make_generator(config.teacher, retriever, workspace)
        threshold, method = workspace_threshold(workspace, config.teacher)
        return Teacher(retriever, config.teacher, generator, threshold, config.corpus.injection_patterns, method,
                       Reranker.from_workspace(workspace, config))

    def answer(self, query: str, scope: str | None = None, turn: Turn | None = None) -> Answer:
        """`turn`: the conversation's turn `query` was made from. For a rule rewrite, retrieval and
        the checks read `query` (the message with the earlier turns' words), an LLM the message as
        written after the earlier user turns (`build_messages`)."""
        return self.answer_batch([(query, scope)], [turn])[0]

    def use_feedback(self, verdicts: Verdicts, config: FeedbackConfig) -> None:
        """Answer from now on with users' verdicts on the chunks it answered from (feedback.RatedEvidence)."""
        if self.rated is None:
            self.rated = RatedEvidence(self.retriever.embed_queries, config.similar_question, config.withdraw_below)
        self.rated.update(verdicts)

    def answer_batch(self, queries: list[tuple[str, str | None]], turns: list[Turn | None] | None = None) -> list[Answer]:
        """Answer several queries: their embeddings, and the extractive backend's sentence
        embeddings, are computed in one batch each; shared costs are split evenly in `latency_ms`."""
        if not queries:
            return []
        turns = turns or [None] * len(queries)
        started = time.perf_counter()
        vectors, retrievals, evidences, scores, embed_ms = self._retrieve(queries)
        refusals = [self._early_refusal(r, e, a) for r, e, a in zip(retrievals, evidences, scores)]
        shared_ms = (time.perf_counter() - started) * 1000 / len(queries) - \
            sum(r.latency_ms for r in retrievals) / len(queries)
        generations: list[Generation | None] = [None] * len(queries)
        if generate_many := getattr(self.generator, "generate_many", None):  # a remote endpoint: all at once
            wanted = [i for i, refusal in enumerate(refusals) if refusal is None]
            asked = generate_many([prompt(retrievals[i].query, evidences[i], turns[i]) for i in wanted])
            for i, generation in zip(wanted, asked):
                generations[i] = generation
        return [self._answer(r, e, v, a, refusal, embed_ms, shared_ms, g, t)
                for r, e, v, a, refusal, g, t in zip(retrievals, evidences, vectors, scores, refusals, generations, turns)]

    def evidence(self, query: str, scope: str | None = None) -> tuple[list[dict], str | None, float | None]:
        """(evidence, refusal, answerability) for a question, nothing generated: the chunks this
        teacher would read, why it would refuse before generating (None: it would answer) and the
        answerability score. What the open-book student reads, held to the teacher's own checks."""
        _, retrievals, evidences, scores, _ = self._retrieve([(query, scope)])
        return evidences[0], self._early_refusal(retrievals[0], evidences[0], scores[0]), scores[0]

    def fit_answerability(self, rated: list[float] = ()) -> "answerability.Calibration":
        """Fit the answerability threshold on the corpus's own evidence (`answerability.fit`): the
        documents' questions, each asked of its section's text without its heading, and the
        off-topic probes, and `rated`: the scores of questions users said the documents answer.
        Retrieval only, nothing is generated; the teacher answers with the new threshold from now on."""
        questions = answerability.documents_questions(self.retriever.chunks)
        known = self._documents_question_scores(questions)
        probes = answerability.probe_questions(sorted(self.retriever.scopes, key=str))
        probed = [score for start in range(0, len(probes), 64) for score in self._retrieve(probes[start:start + 64])[3]]
        calibration = answerability.fit(known, probed, self.config.answerability_quantile, self.config.min_answerability,
                                        self.retriever.generation,
                                        {"known_answerable": [q.text for q in questions],
                                         "known_unanswerable": list(dict.fromkeys(q for q, _ in probes))}, rated)
        self.threshold, self.method = calibration.threshold, calibration.method
        return calibration

    def _documents_question_scores(self, questions: list["answerability.DocumentQuestion"]) -> list[float]:
        """Each document question's score as a user's question would get it: its own section's
        text without the heading that holds its words (so it is matched on meaning, as a
        rephrasing would be), beside what the rest of the corpus offers."""
        if not questions:
            return []
        vectors = self.retriever.embed_queries([q.text for q in questions])
        texts = [[answerability.without_heading_line(c["text"], q.text) for c in q.chunks] for q in questions]
        own_vectors = self.retriever.encode([t for group in texts for t in group])
        scores, at = [], 0
        for question, vector, group in zip(questions, vectors, texts):
            similarity = own_vectors[at:at + len(group)] @ vector
            at += len(group)
            best = int(np.argmax(similarity))
            own = {**question.chunks[best], "text": group[best], "heading": None}
            others = self.retriever.search(question.text, question.scope, query_vector=vector, withhold=question.doc_id)
            evidence = [own] + select_evidence(others, self.config)[: self.config.context_chunks - 1]
            top = max([float(similarity[best])] + [h.dense_score for h in others.hits])
            scores.append(self._score(question.text, evidence, vector, top))
        return scores

    def _retrieve(self, queries: list[tuple[str, str | None]]):
        """(query vectors, retrievals, evidence, answerability scores, embedding ms per query): all
        that comes before generating, with the queries and the evidence sentences embedded in one
        batch each."""
        started = time.perf_counter()
        vectors = self.retriever.embed_queries([q for q, _ in queries])
        embed_ms = (time.perf_counter() - started) * 1000 / len(queries)
        retrievals = [self.retriever.search(q, s, query_vector=v) for (q, s), v in zip(queries, vectors)]
        if self.reranker is not None:
            self.reranker.rerank_retrievals(retrievals)  # one cross-encoder call for the batch
        if self.rated is not None:
            self.rated.reorder(retrievals, vectors)  # what users rated wrong last, right first
        evidences = [select_evidence(r, self.config) for r in retrievals]
        self.sentences.prepare([chunk for evidence in evidences for chunk in evidence])
        scores = [self.answerability(r, e, v) for r, e, v in zip(retrievals, evidences, vectors)]
        return vectors, retrievals, evidences, scores, embed_ms

    def answerability(self, retrieval: Retrieval, evidence: list[dict], vector: np.ndarray) -> float | None:
        """The answerability score of this evidence for this question (None without evidence)."""
        if not evidence:
            return None
        return self._score(retrieval.query, evidence, vector, max(h.dense_score for h in retrieval.hits))

    def _score(self, query: str, evidence: list[dict], vector: np.ndarray, top: float) -> float:
        self.sentences.prepare(evidence)
        sentence = max((score for score, _ in self.sentences.scored(evidence, vector)), default=0.0)
        asked = answerability.content_words(words(query))
        best = text_words(evidence[0]["text"])[1] | set(words(evidence[0].get("heading") or ""))
        coverage = len(asked & best) / len(asked) if asked else 0.0
        return answerability.score(top, sentence, coverage)

    def _early_refusal(self, retrieval: Retrieval, evidence: list[dict], score: float | None) -> str | None:
        """Why to refuse before generating: no evidence, evidence too far from the question, or
        evidence that does not answer it."""
        top = max((h.dense_score for h in retrieval.hits), default=None)
        if not evidence:
            return "no_evidence"
        if first_match(retrieval.query, self.injection):
            return "injection"
        if top is None or top < self.config.min_top_score:
            return "low_retrieval_score"
        if self.config.refuse_unknown_names and self._unknown_names(retrieval.query):
            return "unknown_name"
        if score is not None and score < self.threshold:
            return "not_answerable"
        return None

    def _unknown_names(self, query: str) -> list[str]:
        return answerability.unknown_names(query, self.retriever.bm25.knows)

    def _answer(self, retrieval: Retrieval, evidence: list[dict], vector: np.ndarray, score: float | None,
                refusal: str | None, embed_ms: float, shared_ms: float,
                generation: Generation | None = None, turn: Turn | None = None) -> Answer:
        """`refusal`: `_early_refusal`'s verdict, decided once per question in `answer_batch`."""
        started = time.perf_counter()
        generated_apart_ms = generation.elapsed_ms or 0.0 if generation else 0.0  # a concurrent batch's request
        query, scope = retrieval.query, retrieval.scope
        dense_scores = sorted((h.dense_score for h in retrieval.hits), reverse=True)
        top = dense_scores[0] if dense_scores else None
        margin = dense_scores[0] - dense_scores[1] if len(dense_scores) > 1 else None
        messages = prompt(query, evidence, turn)
        if refusal is not None:
            generation = Generation("")
        else:
            generation = generation or self.generator.generate(query, evidence, messages, query_vector=vector)
            if not generation.text.strip() or DECLINE.match(generation.text):
                refusal = "model_declined"
        cited = [] if refusal else cite(generation.text, evidence)
        if refusal is None and not cited:
            refusal = "ungrounded_answer"
        retrieved_ids = [h.chunk["chunk_id"] for h in retrieval.hits]
        return Answer(
            query=query, scope=scope, answer="" if refusal else generation.text.strip(),
            citations=[c["chunk_id"] for c in cited],
            cited_doc_versions=[{"doc_id": c["doc_id"], "version": c["version"]} for c in cited],
            retrieved=retrieved_ids, refused=refusal is not None, refusal_reason=refusal,
            top_score=top, score_margin=margin, retriever_agreement=retrieval.agreement,
            mean_logprob=generation.mean_logprob, answer_score=generation.answer_score,
            groundedness=groundedness(generation.text, cited) if cited else None,
            citation_valid=all(c["chunk_id"] in retrieved_ids for c in cited),
            latency_ms=(time.perf_counter() - started) * 1000 + retrieval.latency_ms + shared_ms + generated_apart_ms,
            retrieval_ms=retrieval.latency_ms + embed_ms,
            prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
            model=self.generator.model_name, backend=self.generator.backend, prompt=messages,
            answerability=score, answerability_threshold=self.threshold, answerability_method=self.method,
            nearest_topics=answerability.nearest_topics([h.chunk for h in retrieval.hits if not (
                self.config.drop_flagged_chunks and h.chunk["injection_flag"])]) if refusal else [],
            unknown_names=self._unknown_names(query) if refusal == "unknown_name" else [])


def prompt(query: str, evidence: list[dict], turn: Turn | None) -> list[dict]:
    """What the LLM reads: the question, or for a rule rewrite the message after its earlier turns."""
    if turn is not None and turn.method == "rules":
        return build_messages(turn.message, evidence, turn.earlier)
    return build_messages(query, evidence)


TEACHERS: dict[str, Callable[[Workspace, Config], AnyTeacher]] = {  # teacher.backend -> its teacher; any other: Teacher.own_rag
    "http": lambda workspace, config: HttpTeacher(config),
}


def workspace_threshold(workspace: Workspace, config: TeacherConfig) -> tuple[float, str]:
    """(threshold, method): `teacher.min_answerability` ('setting' when calibration is off,
    'default' before a fit), or the workspace's fitted threshold."""
    if not config.calibrate_answerability:
        return config.min_answerability, "setting"
    calibration = answerability.load_calibration(workspace)
    return (calibration.threshold, calibration.method) if calibration else (config.min_answerability, "default")


def ensure_answerability_fitted(workspace: Workspace, config: Config, teacher: "Teacher | None" = None,
                      force: bool = False) -> "answerability.Calibration | None":
    """Fit the workspace's answerability threshold when it has none, or one fitted on an older
    corpus generation (every ingest and retriever switch makes a new one), or on fewer of the
    questions users rated answerable than the store now holds (`rated_answerable`); returns the
    new fit, or None when the current one stands (or calibration is off, or the teacher is a
    service of the team's own, which refuses by its own rules)."""
    if not config.teacher.calibrate_answerability or config.teacher.backend == "http":
        return None
    current = answerability.load_calibration(workspace)
    meta = dense_meta(workspace)
    generation = int(meta.get("generation", 0)) if meta else None
    rated = rated_answerable(workspace, config, generation)
    if not force and current is not None and current.corpus_generation == generation and \
            current.evidence.get("rated_answerable", {}).get("count", 0) == len(rated):
        return None
    if teacher is None or teacher.retriever.generation != generation:
        retriever = Retriever(workspace, config.index)  # retrieval only: the generator never runs
        teacher = Teacher(retriever, config.teacher, ExtractiveGenerator(EvidenceSentences(retriever.encode), 1))
    calibration = teacher.fit_answerability(rated)
    answerability.save_calibration(workspace, calibration)
    return calibration


def rated_answerable(workspace: Workspace, config: Config, generation: int | None) -> list[float]:
    """The answerability scores, at this corpus generation, of the questions users said the
    documents answer: an answer rated right, a refusal rated wrong (weighed as feedback.py weighs)."""
    if not has_traces(workspace.traces_db):
        return []
    with TraceStore(workspace.traces_db) as store:
        ratings = store.feedback()
        traces = store.traces_by_id([r["trace_id"] for r in ratings]) if ratings else {}
    verdicts = Verdicts(config.feedback, ratings)
    rated = []
    for trace in traces.values():
        verdict = verdicts.score(answer_key(trace["scope"], trace["query"] or "", trace["answer"] or ""))
        if trace["answerability"] is None or verdict is None or trace["corpus_generation"] != generation:
            continue
        if (verdict > 0 and not trace["refused"]) or (verdict < config.feedback.withdraw_below and trace["refused"]):
            rated.append(float(trace["answerability"]))
    return rated
