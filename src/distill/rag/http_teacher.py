"""The teacher of a team that runs its own RAG (`teacher.backend = "http"`): each question is
POSTed to their endpoint, and the answer, its citations and the contexts it read come back
as an `Answer` like the built-in teacher's. Contexts are versioned by their content hash, so
a context whose text changes takes its intents off replay (docs/byo-rag.md).
"""

from __future__ import annotations

import os
import time
from functools import lru_cache

import numpy as np

from distill.config import Config, IndexConfig
from distill.errors import DistillError
from distill.llm.http import RetryingClient
from distill.rag.answers import Answer, cite, groundedness
from distill.rag.conversation import Turn
from distill.rag.index import Retrieval
from distill.workspace import Workspace


@lru_cache(maxsize=65_536)
def content_version(text: str) -> int:
    """A context's version when its source gives none: 28 bits of the hash of its words (the
    trace store keeps versions as integers), so the same text always has the same version.

        content_version("Refunds within 30 days.") == content_version("Refunds  within 30 days.")  # True
    """
    import hashlib

    return int(hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:7], 16)


def context_chunks(contexts) -> list[dict]:
    """A RAG system's contexts ([{id, text, version?, doc_id?}]) as chunks with ids in the store's
    form, `<doc_id>@v<version>#<position>`. A context with a `version` is that version of its
    document (`doc_id`, else its own id). One without is its own document (its id), versioned by its
    content hash: the other passages of the same document have other hashes, and one document
    version per passage is the only way a changed passage can be told from a different passage.
    ValueError if malformed."""
    if not isinstance(contexts, list) or not all(isinstance(c, dict) and c.get("id") is not None
                                                 and isinstance(c.get("text"), str) for c in contexts):
        raise ValueError("'contexts' must be a list of {id, text, version?, source?, doc_id?}")
    chunks = []
    for position, context in enumerate(contexts):
        if isinstance(context.get("version"), int):
            doc_id, version = str(context.get("doc_id") or context["id"]), context["version"]
        else:
            doc_id, version = str(context["id"]), content_version(context["text"])
        chunks.append({"chunk_id": f"{doc_id}@v{version}#{position}", "text": context["text"], "doc_id": doc_id,
                       "version": version, "given_id": str(context["id"]), "heading": None})
    return chunks


def cited_contexts(answer: str, chunks: list[dict], citations) -> list[dict]:
    """The chunks an answer cites: those its `citations` (context ids) name, or, when it names none,
    the context holding the answer (`cite`). ValueError for a citation that is no context."""
    if citations is None:
        return cite(answer, chunks) if answer.strip() else []
    by_id = {c["given_id"]: c for c in chunks}
    missing = [str(c) for c in citations if str(c) not in by_id]
    if missing:
        raise ValueError(f"citation {missing[0]!r} is not among the contexts' ids")
    return [by_id[str(c)] for c in citations]


class ExternalDocuments:
    """What the router reads from a retriever, for a RAG system whose corpus is not ingested here:
    query embeddings (`index.embedding_model`, for the coverage decision), and the version of each
    document as the RAG service's answers last showed it. No search: the coverage decision's
    evidence check cannot ask where RAG would look without asking it every question, so every
    wording (and every calibration example) is judged without that check, by similarity alone."""

    generation = 0

    def __init__(self, config: IndexConfig):
        from distill.rag.embed import load_embedder

        self.model = load_embedder(config.embedding_model)
        self.dense = {"embedder": config.embedding_model}
        self.store, self.scopes = self, set()
        self.versions: dict[str, int] = {}  # doc_id -> version last seen; a changed one makes intents stale
        self._query_vectors: dict[str, np.ndarray] = {}

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        from distill.rag.embed import embed
        from distill.rag.index import embed_cached

        return embed_cached(self._query_vectors, lambda texts: embed(self.model, texts), queries)

    def document_versions(self) -> dict[str, int]:
        return self.versions  # the live dict: the router sees every update

    def chunk_texts(self, chunk_ids) -> dict[str, str]:
        return {}

    def search(self, query: str, scope: str | None = None, k: int | None = None, latest_only: bool = True,
               query_vector: np.ndarray | None = None) -> Retrieval:
        return Retrieval(query, scope, [], [], [], 0.0)


class HttpTeacher:
    """`teacher.backend = "http"`: the team's own RAG service is the teacher, and the router's
    fallback. Each question is POSTed as `{query, scope}` (field names in `teacher.http`) and its
    answer read from `{answer, citations, contexts}`; requests are retried on connection errors,
    timeouts, 429 and 5xx (`RetryingClient`), `max_concurrency` at once. Its answers are traces
    like any other: citations are found by word overlap when the service gives none, and every
    context's version (its content hash when it has none) is remembered, so an intent whose
    context changed is stale from the first answer that shows the change.

        teacher = HttpTeacher(config)   # config.teacher.http.url = "http://rag.internal/answer"
        teacher.answer("How long is the refund window?", "billing").citations  # ['kb/refunds@v1#0']
    """

    def __init__(self, config: Config):
        cfg = config.teacher.http
        self.config, self.http, self.threshold = config.teacher, cfg, None
        self.retriever = ExternalDocuments(config.index)
        self.client = RetryingClient(cfg.url, cfg.timeout_s, os.environ.get(cfg.api_key_env), cfg.max_concurrency,
                                     cfg.max_retries, cfg.retry_backoff_s, "teacher.http.url")
        self.client.what = "the RAG endpoint"
        self.generator = self  # what collect and the router read of a generator: its backend and model
        self.backend, self.model_name = "http", cfg.url

    def reloaded(self, workspace: Workspace, config: Config) -> "HttpTeacher":
        return self

    def use_feedback(self, verdicts, config) -> None:
        """Nothing to do: the team's RAG chooses its own evidence. Users' ratings still withdraw the
        answers and intents they rate wrong, in the router."""

    def answer(self, query: str, scope: str | None = None, turn: Turn | None = None) -> Answer:
        """`turn` is not sent: the team's RAG answers `query`, a rule rewrite's joined words included."""
        return self._ask((query, scope))

    def answer_batch(self, queries: list[tuple[str, str | None]]) -> list[Answer]:
        return self.client.map(self._ask, queries)

    def _ask(self, question: tuple[str, str | None]) -> Answer:
        query, scope = question
        cfg = self.http
        started = time.perf_counter()
        response = self.client.post("", {cfg.query_field: query, cfg.scope_field: scope},
                                    hint="teacher.http.url and teacher.http.api_key_env")
        try:
            data = response.json()
            text = data.get(cfg.answer_field) or ""
            chunks = context_chunks(data.get(cfg.contexts_field) or [])
            cited = cited_contexts(text, chunks, data.get(cfg.citations_field))
        except (ValueError, AttributeError, TypeError) as err:
            raise DistillError(f"the RAG endpoint at {cfg.url} answered {response.text[:120]!r}, not "
                               f"{{{cfg.answer_field}, {cfg.citations_field}, {cfg.contexts_field}}} ({err}); "
                               f"set the teacher.http field names") from None
        for chunk in chunks:
            self.retriever.versions[chunk["doc_id"]] = chunk["version"]
        refusal = None if text.strip() and cited else ("empty_answer" if not text.strip() else "ungrounded_answer")
        return Answer(
            query=query, scope=scope, answer="" if refusal else text.strip(), citations=[c["chunk_id"] for c in cited],
            cited_doc_versions=[{"doc_id": c["doc_id"], "version": c["version"]} for c in cited],
            retrieved=[c["chunk_id"] for c in chunks], refused=refusal is not None, refusal_reason=refusal,
            top_score=None, score_margin=None, retriever_agreement=None, mean_logprob=None, answer_score=None,
            groundedness=groundedness(text, cited) if cited else None, citation_valid=bool(cited),
            latency_ms=(time.perf_counter() - started) * 1000, retrieval_ms=0.0,
            prompt_tokens=int(data.get("prompt_tokens") or 0), completion_tokens=int(data.get("completion_tokens") or 0),
            model=str(data.get("model") or cfg.url), backend="http",
            nearest_topics=[c["doc_id"] for c in chunks[:3]] if refusal else [])
