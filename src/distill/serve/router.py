"""The runtime router: each question by the cheapest safe route (replay, the student, RAG).

    router = Router.from_workspace(workspace)          # construct once, share across requests
    routed = router.answer("How long is the refund window?", scope="billing")
    routed.route, routed.reason, routed.answer
    router.answer("What dosage of ibuprofen is safe?", scope="billing").reason  # 'high_risk'

Three routes, cheapest first. `replay`: a question a trained intent covers gets that intent's
agreed answer, without generating. `student`: what replay cannot take (not covered, stale,
withdrawn) the open-book student answers from the evidence retrieved now (open_book.py), when the
checks below let it. `rag`: everything else; RouteLLM's rule, on any doubt the strong model
answers. The first check that fails is the recorded reason: replay's checks are `REPLAY_CHECKS`
(routes.py), in order; for what replay cannot take (coverage, withdrawn, stale, rated_wrong) the open-book
student is tried before RAG (`checks["replay"]` keeps why replay could not), under its own checks
(`student_gate.STUDENT_CHECKS`). docs/routing.md lists both, generated from them.

A served student answer cites the chunk it quoted, at the version read now, so a changed document
is answered from its new version. A version with no student (`student.Replay`: a team's own RAG,
whose evidence distill cannot read) replays and sends the rest to RAG.
A replayed answer carries the covering intent's citations (the chunks the teacher cited when it
gave that answer). Every decision becomes a trace (route, reason, each check's score, router and
generation time; `backend` 'replay' or 'open_book'), written by a background
thread so requests never wait on the database.

Shadow checks: a share (`router.shadow_share`) of questions served without RAG is answered by RAG
as well, off the request path, and the two answers' token F1 is stored (`shadow_checks`, with the
route checked). For the open-book student a disagreement raises its confidence threshold to just
above that answer's score, and an agreement lowers it slowly (student_gate.py). For replay, a
disagreement (another document and token F1 below `eval.success_f1`) tightens that intent at once:
only questions scoring above the one that disagreed are served for it from then on, and a
disagreement on a trained wording withdraws it; each agreement loosens it slowly (coverage.py). An
intent whose agreement averages below `router.withdraw_below` over `router.withdraw_min_samples`
checks is withdrawn too (`withdrawn_intents`, with the evidence) and goes to RAG until the next
student version.
Feedback: `router.feedback(trace_id, score)` (and `POST /v1/feedback`) rates an answer; the rating is
journaled where every router of the workspace reads it within `router.reload_s`, and acts at once in
the router that took it (feedback.py says how ratings are weighed).
`router.mode = "shadow"` is for measuring before switching: RAG answers everything, and what replay
would have answered every covered question is checked against it, logged the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import random
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from distill import registry
from distill.config import Config
from distill.errors import DistillError
from distill.learn.coverage import Assessment, Decision
from distill.learn.curate import REFUSAL_COMPLETION
from distill.learn.open_book import parse_answer, student_evidence
from distill.learn.student_gate import StudentGate
from distill.metrics import normalize_query
from distill.rag.conversation import Turn
from distill.rag.corpus import cited_document, compile_patterns, first_match
from distill.rag.teacher import Teacher, workspace_threshold
from distill.serve.routes import (
    OPEN_BOOK_AFTER,
    RoutedAnswer,
    conversation_turn,
    load_student,
    rag_documents,
    routed_trace,
)
from distill.serve.workers import ShadowChecker, StudentBatcher, SwapLock
from distill.store.feedback import Rating, RecentTraces, Verdicts, answer_key, intent_key
from distill.store.schema import Trace
from distill.store.segments import FeedbackJournal, feedback_folder
from distill.store.writer import TraceWriter
from distill.workspace import Workspace

logger = logging.getLogger(__name__)


FEEDBACK_POLL_S = 0.25  # how often a watching router reads new ratings from every process's journal





class Router:
    """See the module docstring. Thread-safe: the cheap checks run concurrently, concurrent student
    questions are batched into one generate call (`StudentBatcher`), teacher answers run one at a time."""

    def __init__(self, teacher: Teacher, config: Config, student=None, version: str | None = None,
                 writer: TraceWriter | None = None, workspace: Workspace | None = None):
        """With `workspace`, `watch` follows the workspace's corpus and registry (see `reload`)."""
        self.config, self.writer, self.workspace = config, writer, workspace
        if not 0.0 <= config.router.max_error_rate <= 1.0:
            raise DistillError(f"setting 'router.max_error_rate' must be between 0 and 1 (got {config.router.max_error_rate})")
        if config.router.reload_s < 0:
            raise DistillError(f"setting 'router.reload_s' must be 0 (never) or more (got {config.router.reload_s})")
        self.risk = compile_patterns(config.curate.high_risk_patterns, "curate.high_risk_patterns")
        self.injection = compile_patterns(config.corpus.injection_patterns)
        self._teacher_lock = threading.Lock()
        self._swap = SwapLock()
        self.student_problem: str | None = None  # why a promoted student is not serving, if it is not
        self.origin = "service"  # written on every trace; `distill ask` sets 'ask' (curate's cutoff ignores those)
        self.verdicts = Verdicts(config.feedback)
        self.journal = FeedbackJournal(feedback_folder(workspace.traces_db)) if workspace else None
        self.recent = RecentTraces()  # what a rating of this router's latest answers needs
        self.__dict__.update(self._state(teacher, student, version))
        self.refresh_feedback()
        self.wanted_version = version  # the registry's current version when last looked at
        self.shadow = ShadowChecker(self, writer)
        self._sample = random.Random(0)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _state(self, teacher: Teacher, student, version: str | None) -> dict:
        """Everything a request reads that a reload replaces: the teacher (corpus generation), the
        student with its intents, coverage decision, batcher and withdrawn intents."""
        intents = student.manifest.get("intents", []) if student else []
        if student and intents and not any(c.get("wordings") for c in intents):
            raise DistillError(f"student {version} was trained before distill recorded its intents' wordings; "
                               f"retrain it with `distill train` or `distill nightly`")
        cfg, generates = self.config, getattr(student, "generates", False)
        return {"teacher": teacher, "generation": teacher.retriever.generation,
                "latest": teacher.retriever.store.document_versions(),  # doc_id -> the version RAG retrieves now
                "student": student, "version": version, "intents": {c["intent_id"]: c for c in intents},
                "decision": Decision.load(getattr(student, "folder", None), student.manifest if student else {},
                                          teacher.retriever.embed_queries, cfg.router.max_error_rate,
                                          cfg.router.coverage_threshold, functools.partial(rag_documents, teacher)),
                "batcher": StudentBatcher(student, cfg.student.max_batch, cfg.router.batch_wait_s,
                                          cfg.router.student_timeout_s) if generates else None,
                "gate": StudentGate.load(student.folder, cfg.router.max_error_rate, cfg.eval,
                                         teacher.generator.backend) if generates else None,
                "withdrawn": self.writer.withdrawn_intents(version) if self.writer and version else set()}

    # -- following the workspace -----------------------------------------------------------------

    def watch(self) -> None:
        """Call `reload` every `router.reload_s` seconds from a background thread until `close`, and
        read new ratings every FEEDBACK_POLL_S in between (tailing the journals costs a few stats),
        so a rating given to another worker acts here well within `router.reload_s`."""
        if self.workspace is None or not self.config.router.reload_s or self._watcher:
            return
        tick = min(FEEDBACK_POLL_S, self.config.router.reload_s)

        def run() -> None:
            due = time.monotonic() + self.config.router.reload_s
            while not self._stop.wait(tick):
                try:
                    if time.monotonic() >= due:
                        due = time.monotonic() + self.config.router.reload_s
                        self.reload()
                    else:
                        self.refresh_feedback()
                except Exception:  # a half-written change or a broken version: keep serving, look again
                    logger.exception("reload failed; still serving corpus generation %s, student %s",
                                     self.generation, self.version)

        self._watcher = threading.Thread(target=run, name="distill-reload", daemon=True)
        self._watcher.start()

    def reload(self) -> bool:
        """Swap to the workspace's corpus generation and promoted student if either changed since
        this router loaded them; True when it swapped. The new state is built aside, then swapped
        in between requests (`SwapLock`): from then on freshness is checked against the new
        document versions, and the new student (or none) answers."""
        from distill.rag.index import dense_meta

        meta = dense_meta(self.workspace) or {}
        generation = int(meta.get("generation", 0))
        self.refresh_feedback()
        version = registry.current(self.workspace.models_dir, self.config.train.student_name)
        if isinstance(self.teacher, Teacher):  # fitted again when the corpus changes (ingest, collect, curate)
            self.teacher.threshold, self.teacher.method = workspace_threshold(self.workspace, self.config.teacher)
        if generation == self.generation and version == self.wanted_version:
            return False
        teacher = self.teacher if generation == self.generation else self.teacher.reloaded(self.workspace, self.config)
        embedder_changed = teacher.retriever.dense["embedder"] != self.teacher.retriever.dense["embedder"]
        problem = self.student_problem
        if version != self.wanted_version or embedder_changed:  # the decision's vectors need the new embedder
            student, loaded, problem = load_student(self.workspace, self.config, version) if version != self.version \
                else (self.student, self.version, None)
            state = self._state(teacher, student, loaded)
        else:
            state = {"teacher": teacher, "generation": teacher.retriever.generation,
                     "latest": teacher.retriever.store.document_versions()}
        retired = self.batcher if state.get("batcher", self.batcher) is not self.batcher else None
        if teacher is not self.teacher:
            teacher.use_feedback(self.verdicts, self.config.feedback)
        with self._swap.writing():
            self.__dict__.update(state)
            self.decision.evidence_doc = functools.partial(rag_documents, self.teacher)
            self.student_problem, self.wanted_version = problem, version
        if retired:
            retired.close()
        logger.info("now serving corpus generation %s, student %s", self.generation, self.version)
        return True

    @classmethod
    def from_workspace(cls, workspace: Workspace | Path | str, config: Config | None = None,
                       log: bool | None = None, watch: bool = True) -> "Router":
        """The teacher over the workspace's index, the promoted student (if any) and a trace writer;
        with `watch`, it follows the workspace's changes (`router.reload_s`).
        `workspace` may be a Workspace or its folder: `Router.from_workspace("ws")`."""
        if not isinstance(workspace, Workspace):
            workspace = Workspace.resolve(workspace)
        config = config or workspace.config()
        teacher = Teacher.from_workspace(workspace, config)
        wanted = registry.current(workspace.models_dir, config.train.student_name)
        student, version, problem = load_student(workspace, config, wanted)
        writer = TraceWriter(workspace.traces_db) if (config.router.log_traces if log is None else log) else None
        router = cls(teacher, config, student, version, writer, workspace)
        router.student_problem, router.wanted_version = problem, wanted
        if watch:
            router.watch()
        return router

    def close(self) -> None:
        """Stop following the workspace, finish the queued shadow checks and flush the traces still queued."""
        self._stop.set()
        if self._watcher:
            self._watcher.join()
            self._watcher = None
        if self.shadow:
            self.shadow.close()
            self.shadow = None
        if self.batcher:
            self.batcher.close()
            self.batcher = None
        if self.writer:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "Router":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- deciding -------------------------------------------------------------------------------

    def check(self, query: str, scope: str | None = None,
              turn: Turn | None = None) -> tuple[str | None, dict, dict | None]:
        """The cheap checks (everything before generation): (failed check or None, scores, intent)."""
        failed, checks, intent, found = self.assess(query, scope, turn)
        if failed is None and not found.covered:
            return "coverage", checks, None
        return failed, checks, intent

    def assess(self, query: str, scope: str | None = None,
               turn: Turn | None = None) -> tuple[str | None, dict, dict | None, Assessment | None]:
        """`check` without the coverage verdict, and the coverage assessment itself, so that an
        evaluation can decide coverage at several error rates from one pass. With `turn` (a
        conversation's), `query` is its standalone question and the message is what is checked as
        input; the risk checks read the question, the earlier turns included."""
        cfg = self.config.router
        checks: dict = {}
        asked = turn.message if turn is not None else query
        if not isinstance(asked, str) or not asked.strip() or len(asked) > cfg.max_query_chars:
            return "input", checks, None, None
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:
            return "input", checks, None, None
        if (scope in self.config.curate.high_risk_scopes) or first_match(query, self.risk):
            return "high_risk", checks, None, None
        if first_match(query, self.injection):
            return "injection", checks, None, None
        if turn is not None and turn.method != "none":
            checks.update(rewrite=turn.method, conversation_signal=turn.signal)
            if not turn.standalone:
                return "conversation", checks, None, None
        if self.student is None:
            return "no_student", checks, None, None
        vector = self.teacher.retriever.embed_queries([query.strip()])[0]
        found = self.decision.assess(vector, scope, normalize_query(query), query.strip())
        intent = self.intents.get(found.intent_id)
        checks.update(coverage=found.similarity, rival=found.rival, score=found.score, seen=found.seen,
                      same_evidence=found.same_evidence, max_error_rate=cfg.max_error_rate, estimated_error=found.risk,
                      threshold=None if found.threshold == float("inf") else round(found.threshold, 4))
        if intent is None:
            return "coverage", checks, None, found
        checks["intent_id"] = intent["intent_id"]
        if intent["intent_id"] in self.withdrawn:
            return "withdrawn", checks, intent, found
        if self.verdicts.wrong(intent_key(self.version, intent["intent_id"])):
            checks["withdrawn_by"] = "feedback"
            return "withdrawn", checks, intent, found
        stale = self._stale_documents(query, scope, vector, intent, checks)
        if stale:
            checks["stale_documents"] = stale
            return "stale", checks, intent, found
        return None, checks, intent, found

    def _stale_documents(self, query: str, scope: str | None, vector: np.ndarray, intent: dict,
                         checks: dict) -> list[str]:
        """The changed documents that make the student's answer for `intent` untrustworthy: any
        document its answers cited, and any document retrieved beside them that, at its new version,
        is among the evidence RAG would now read for this question (the top `teacher.context_chunks`),
        since the answer may now come from it. A changed neighbour that no longer reaches the
        evidence leaves the answer standing (docs/design-figures.md: what the other rules kept)."""
        def changed(key: str) -> set[str]:  # a document RAG has not shown yet (an external one) counts as unchanged
            return {d["doc_id"] for d in intent.get(key, [])
                    if d["doc_id"] in self.latest and self.latest[d["doc_id"]] != d["version"]}

        cited = {d["doc_id"] for d in intent.get("cited_doc_versions", [])}
        if changed_cited := changed("cited_doc_versions"):
            return sorted(changed_cited)
        neighbours = changed("retrieved_doc_versions") - cited
        if not neighbours:
            return []
        checks["evidence_searched"] = True  # the one check that costs a retrieval, only after a document changed
        evidence = self.teacher.retriever.search(query, scope, k=self.config.teacher.context_chunks,
                                                 query_vector=vector).hits
        return sorted({hit.chunk["doc_id"] for hit in evidence} & neighbours)

    # -- answering -------------------------------------------------------------------------------

    def answer(self, query: str, scope: str | None = None, history: list[dict] | None = None) -> RoutedAnswer:
        """Route one question (thread-safe); the answer says which route took it and why. With
        `history` (the conversation's earlier messages, OpenAI-style, oldest first), `query` is its
        last user message, answered as a standalone question (rag/conversation.py)."""
        with self._swap.reading():  # one corpus generation and one student for the whole request
            started = time.perf_counter()
            turn = self.standalone(query, history, scope) if history else None
            return self._answer(turn.question if turn else query, scope, turn, started)

    def standalone(self, message: str, history: list[dict], scope: str | None = None) -> Turn:
        """`message` made standalone against `history` (routes.conversation_turn)."""
        return conversation_turn(self.teacher, self._teacher_lock, message, history, scope)

    def _answer(self, query: str, scope: str | None, turn: Turn | None = None,
                started: float | None = None) -> RoutedAnswer:
        started = time.perf_counter() if started is None else started
        failed, checks, intent = self.check(query, scope, turn)
        router_ms = (time.perf_counter() - started) * 1000
        if self.config.router.mode == "shadow":
            routed = self._finish(self._from_teacher(query, scope, failed or "shadow", checks, router_ms, turn), started, turn)
            if failed is None:  # what replay would have answered, checked against RAG's answer
                self.shadow.submit({"trace_id": routed.trace_id, "query": query, "scope": scope,
                                    "student_version": self.version, "intent_id": intent["intent_id"],
                                    "score": checks["score"], "seen": checks["seen"], "route": "replay",
                                    "student_answer": intent["answer"],
                                    "teacher_answer": "" if routed.refused else routed.answer,
                                    "teacher_doc": cited_document(routed.citations)})
            return routed
        if failed is None:
            routed = self._from_replay(query, scope, checks, intent, router_ms)
            if routed.route == "replay":
                routed = self._finish(routed, started, turn)
                if self._sample.random() < self.config.router.shadow_share:
                    self.shadow.submit({"trace_id": routed.trace_id, "query": query, "scope": scope,
                                        "student_version": self.version, "intent_id": intent["intent_id"],
                                        "score": checks["score"], "seen": checks["seen"], "route": routed.route,
                                        "student_answer": routed.answer})
                return routed
            failed, router_ms = routed.reason, routed.router_ms
        if failed in OPEN_BOOK_AFTER and self.gate is not None:
            checks["replay"] = failed  # why replay could not take it
            routed = self._from_open_book(query, scope, checks, router_ms)
            if routed.route == "student":
                routed = self._finish(routed, started, turn)
                if self._sample.random() < self.config.router.shadow_share:
                    self.shadow.submit({"trace_id": routed.trace_id, "query": query, "scope": scope,
                                        "student_version": self.version, "intent_id": None, "route": "student",
                                        "score": checks["student_score"], "student_answer": routed.answer,
                                        "student_doc": cited_document(routed.citations)})
                return routed
            if routed.reason == "uncalibrated":  # no student route at all: replay's reason stands
                checks["student"] = routed.reason
            else:
                failed, router_ms = routed.reason, routed.router_ms
        return self._finish(self._from_teacher(query, scope, failed, checks, router_ms, turn), started, turn)

    def answer_batch(self, questions: list[tuple[str, str | None]]) -> list[RoutedAnswer]:
        """Answer several questions at once, in order; those the student takes share its batches."""
        if len(questions) <= 1:
            return [self.answer(query, scope) for query, scope in questions]
        workers = min(len(questions), 2 * self.config.student.max_batch)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda pair: self.answer(*pair), questions))

    async def aanswer(self, query: str, scope: str | None = None, history: list[dict] | None = None) -> RoutedAnswer:
        """`answer` for asyncio services: runs in a worker thread, never blocks the event loop."""
        return await asyncio.to_thread(self.answer, query, scope, history)

    def _from_replay(self, query: str, scope: str | None, checks: dict, intent: dict,
                     router_ms: float) -> RoutedAnswer:
        """The covering intent's agreed answer, without generating, unless users rated it wrong for
        this wording."""
        if self.verdicts.wrong(answer_key(scope, query, intent["answer"])):
            return RoutedAnswer(query, scope, "", [], "rag", "rated_wrong", checks, router_ms=router_ms)
        return RoutedAnswer(query, scope, intent["answer"], list(intent.get("citations", [])), "replay", "served",
                            checks, refused=intent["answer"] == REFUSAL_COMPLETION, router_ms=router_ms,
                            student_version=self.version, intent=intent)

    def _from_open_book(self, query: str, scope: str | None, checks: dict, router_ms: float) -> RoutedAnswer:
        """The open-book student, for a question replay cannot take: served only when it is cheaper
        than the teacher here, the teacher's own checks say the evidence answers the question, and
        the student cites a chunk it was shown, quotes it, and is confident enough (student_gate.py).
        The citation is the chunk read now, so a changed document is answered from its new version."""
        cfg, gate = self.config, self.gate
        began = time.perf_counter()

        def rag(reason: str) -> RoutedAnswer:
            return RoutedAnswer(query, scope, "", [], "rag", reason, checks,
                                router_ms=router_ms + (time.perf_counter() - began) * 1000)

        checks.update(student_cost_usd=gate.student_cost, teacher_cost_usd=gate.teacher_cost)
        if reason := gate.before_generating():
            if reason == "confidence":
                checks["student_threshold"] = None
            return rag(reason)
        if not isinstance(self.teacher, Teacher):  # a team's own RAG: no evidence to read here
            return rag("no_evidence")
        with self._teacher_lock:
            evidence, refusal, score = student_evidence(self.teacher, query, scope, cfg.student)
        checks["answerability"] = None if score is None else round(score, 4)
        if refusal is not None:
            checks["teacher_refusal"] = refusal
            return rag("not_answerable")
        if (wait_s := self.batcher.expected_wait_s()) > cfg.router.student_timeout_s:
            checks["student_wait_s"] = round(wait_s, 2)
            return rag("student_busy")
        generating = time.perf_counter()
        try:
            generation = self.batcher.answer(query, scope, evidence)
        except Exception as err:  # any student failure falls back to RAG, never to an error
            checks["student_error"] = f"{type(err).__name__}: {err}"[:200]
            return rag("student_error")
        generation_ms = (time.perf_counter() - generating) * 1000
        gate.saw_student(generation_ms)
        read = parse_answer(generation.text, evidence)
        checks.update(student_score=None if generation.mean_logprob is None else round(generation.mean_logprob, 4),
                      student_threshold=gate.summary()["threshold"], quoted=read.quoted, student_cited=read.chunk_id)
        reason = ("student_timeout" if generation_ms >= cfg.router.student_timeout_s * 1000 else
                  gate.after_generating(read, generation.mean_logprob) or
                  ("rated_wrong" if self.verdicts.wrong(answer_key(scope, query, read.answer)) else None))
        if reason:
            return rag(reason)
        cited = next(c for c in evidence if c["chunk_id"] == read.chunk_id)
        return RoutedAnswer(query, scope, read.answer, [read.chunk_id], "student", "served", checks,
                            router_ms=router_ms + (generating - began) * 1000, generation_ms=generation_ms,
                            student_version=self.version, prompt_tokens=generation.prompt_tokens,
                            completion_tokens=generation.completion_tokens,
                            cited_doc_versions=[{"doc_id": cited["doc_id"], "version": cited["version"]}],
                            evidence_ids=[c["chunk_id"] for c in evidence])

    def _from_teacher(self, query: str, scope: str | None, reason: str, checks: dict, router_ms: float,
                      turn: Turn | None = None) -> RoutedAnswer:
        if reason == "input":
            return RoutedAnswer(query if isinstance(query, str) else "", scope, "", [], "rag", reason, checks,
                                refused=True, router_ms=router_ms)
        began = time.perf_counter()
        with self._teacher_lock:
            answer = self.teacher.answer(query, scope, turn)
        if self.gate is not None and not answer.refused:  # what a teacher answer costs, as it goes
            self.gate.saw_teacher(answer.latency_ms, answer.prompt_tokens, answer.completion_tokens)
        return RoutedAnswer(query, scope, answer.message, answer.citations, "rag", reason, checks,
                            refused=answer.refused, router_ms=router_ms,
                            generation_ms=(time.perf_counter() - began) * 1000, prompt_tokens=answer.prompt_tokens,
                            completion_tokens=answer.completion_tokens, teacher_answer=answer)

    def _finish(self, routed: RoutedAnswer, started: float, turn: Turn | None = None) -> RoutedAnswer:
        routed.turn = turn
        routed.latency_ms = (time.perf_counter() - started) * 1000
        routed.corpus_generation = self.generation
        routed.trace_id = uuid.uuid4().hex
        trace = self._trace(routed)
        self.recent.remember(trace)
        if self.writer:
            self.writer.put("trace", trace)
        return routed

    # -- feedback --------------------------------------------------------------------------------

    def feedback(self, trace_id: str, score: float | bool, comment: str | None = None, source: str | None = None,
                 name: str | None = None, feedback_id: str | None = None, received_by: str = "router") -> dict:
        """Rate the answer of trace `trace_id` (a number in [-1, 1], or True / False); it acts in this
        router at once and in every other within `router.reload_s`. Returns the stored rating with
        `counted` (false past the source's hourly limit) and what it now withdraws. An unknown trace
        id raises UnknownTrace; a bad field, DistillError."""
        trace = self.recent.find(trace_id, self.workspace.traces_db if self.workspace else None)
        payload = {"score": score, "comment": comment, "source": source, "name": name, "id": feedback_id}
        rating = Rating.of({k: v for k, v in payload.items() if v is not None}, trace, received_by,
                           self.config.feedback.default_source)
        if self.journal is not None:
            self.journal.append([rating.record()])
        counted = bool(self.verdicts.add([rating]))
        if counted:
            self.teacher.use_feedback(self.verdicts, self.config.feedback)
        keys = Verdicts.keys(rating.record())
        return {**rating.record(), "counted": counted,
                "answer_rated_wrong": self.verdicts.wrong(keys[0]),
                "intent_withdrawn": len(keys) > 1 and self.verdicts.wrong(keys[1])}

    def refresh_feedback(self) -> int:
        """Weigh the ratings every process journaled since the last look, and let the teacher answer
        with them (`Teacher.use_feedback`); returns how many counted."""
        counted = len(self.verdicts.add(self.journal.read_new())) if self.journal is not None else 0
        if counted:
            self.teacher.use_feedback(self.verdicts, self.config.feedback)
        return counted

    def _trace(self, routed: RoutedAnswer) -> Trace:
        return routed_trace(routed, self.origin, self.config.train.student_name, self.version)
