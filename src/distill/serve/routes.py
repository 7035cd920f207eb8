"""What the router decides and records: its checks in order (`REPLAY_CHECKS`), the routed answer,
and the trace it becomes; loading the promoted student so that a broken version only sends
questions to RAG; making a conversation's turn standalone with the teacher's model and retriever. router.py runs the checks; the evaluation and docs/routing.md read them here.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from distill import registry
from distill.config import Config
from distill.errors import DistillError
from distill.llm.http import ChatEndpoint
from distill.rag.answers import Answer
from distill.rag.conversation import Turn, standalone_turn
from distill.rag.corpus import chunk_doc_version
from distill.store.schema import Trace
from distill.workspace import Workspace

logger = logging.getLogger(__name__)


CONVERSATION_SHIFT = 0.2  # the earlier turns' words raise the best chunk's cosine this much, on another document
# (chosen on the tune half of bench_conversations' entries, docs/benchmarks.md#conversations)


REPLAY_CHECKS = {  # replay's checks, in the order the router runs them; the first that fails is the reason
    "input": "empty, too long (`router.max_query_chars`) or not valid text",
    "high_risk": "a high-risk scope or pattern (`curate.high_risk_scopes`, `curate.high_risk_patterns`)",
    "injection": "the question reads like a prompt injection (`corpus.injection_patterns`)",
    "conversation": "a follow-up that depends on the conversation and could only be made standalone by joining it "
                    "with the earlier turns (no LLM, or the LLM's rewrite did not count): RAG answers it with them "
                    "(rag/conversation.py)",
    "no_student": "no student version is promoted",
    "coverage": "the question is not one of the student's trained wordings, and the calibrated decision "
                "(coverage.py) does not cover it: its nearest intent is not close enough, or not clearly nearer "
                "than another need, for the expected error among such answers to stay within "
                "`router.max_error_rate` (never below `router.coverage_threshold` cosine)",
    "withdrawn": "shadow checks found the replayed answer disagreeing with RAG on this intent, or users' ratings "
                 "of the answers it served weigh below `feedback.withdraw_below` (feedback.py)",
    "stale": "a document the covering intent's answers cited has changed since the student was trained, or a "
             "document retrieved beside it has changed and is now among the evidence RAG would read for this "
             "question (the changed document may now hold the answer)",
    "rated_wrong": "users rated this very answer to this wording wrong (any student version)",
}


BEFORE_COVERAGE = tuple(REPLAY_CHECKS)[:5]  # the checks `check` runs before coverage: nothing may answer these


OPEN_BOOK_AFTER = tuple(REPLAY_CHECKS)[5:]  # what replay cannot take, the student may


SERVED = ("replay", "student")  # routes that answer without RAG


@dataclass
class RoutedAnswer:
    query: str
    scope: str | None
    answer: str
    citations: list[str]
    route: str  # 'replay' (the intent's agreed answer), 'student' (the student generated it) or 'rag'
    reason: str  # 'served', or the name of the check that sent it to RAG
    checks: dict = field(default_factory=dict)  # each check's score, for --explain and the trace
    refused: bool = False
    router_ms: float = 0.0
    generation_ms: float = 0.0
    latency_ms: float = 0.0
    student_version: str | None = None
    corpus_generation: int | None = None  # the corpus (ingest or retriever switch) the router checked against
    prompt_tokens: int = 0
    completion_tokens: int = 0
    trace_id: str = ""
    teacher_answer: Answer | None = field(default=None, repr=False)  # the full RAG answer, for the trace
    intent: dict | None = field(default=None, repr=False)  # the intent the student answered for
    cited_doc_versions: list[dict] | None = field(default=None, repr=False)  # open book: the cited chunk's document
    evidence_ids: list[str] = field(default_factory=list, repr=False)  # open book: the chunks the student read
    turn: Turn | None = field(default=None, repr=False)  # a conversation's turn: what `query` was made from


def load_student(workspace: Workspace, config: Config, version: str | None):
    """(student, version, problem): the registry's `version` loaded, or (None, None, why) when it
    cannot be (a broken version must not stop the service: RAG answers everything meanwhile)."""
    from distill.learn.student import load_version

    if not version:
        return None, None, None
    try:
        folder = registry.student_dir(workspace.models_dir, config.train.student_name) / version
        if config.student.endpoint:  # generated elsewhere (vLLM); the manifest still read here
            endpoint = ChatEndpoint(config.student.endpoint, config.student.endpoint_model,
                                    config.router.student_timeout_s, os.environ.get(config.student.api_key_env),
                                    max_concurrency=config.student.max_batch, max_retries=0,
                                    url_setting="student.endpoint", model_setting="student.endpoint_model")
            return load_version(folder, max_new_tokens=config.student.max_new_tokens, endpoint=endpoint), version, None
        return load_version(folder, config.student.runtime, config.student.max_new_tokens), version, None
    except (DistillError, OSError, ValueError) as err:
        problem = f"student {version} cannot be loaded ({err}); every question goes to RAG"
        logger.error(problem)
        return None, None, problem


def rag_documents(teacher, text: str, scope: str | None, vector: np.ndarray) -> set[str]:
    """The document RAG would read first for a question (the coverage decision's evidence check)."""
    try:
        hits = teacher.retriever.search(text, scope, k=1, query_vector=vector).hits
    except DistillError:  # a scope the corpus no longer has
        return set()
    return {chunk_doc_version(hit.chunk["chunk_id"])[0] for hit in hits}


def routed_trace(routed: RoutedAnswer, origin: str, student_name: str, version: str | None) -> Trace:
    """The trace of a routed answer: the teacher's full answer when RAG answered, else what was
    served (replay or the student), with every check's score."""
    answer = routed.teacher_answer
    common = dict(trace_id=routed.trace_id, query_id=routed.trace_id, asked_at=datetime.now(timezone.utc),
                  scope=routed.scope, query=routed.query, route=routed.route, route_reason=routed.reason,
                  latency_ms=routed.latency_ms, router_ms=routed.router_ms, generation_ms=routed.generation_ms,
                  checks=json.dumps(routed.checks), intent_id=routed.checks.get("intent_id"),
                  corpus_generation=routed.corpus_generation, origin=origin)
    if routed.turn is not None:
        common.update(raw_message=routed.turn.message, rewrite_method=routed.turn.method,
                      conversation_hash=routed.turn.conversation_hash)
    if answer is not None:
        return Trace(**{**answer.trace_fields(), **common})
    served = routed.route in SERVED
    intent = routed.intent or {}
    cited = routed.cited_doc_versions if routed.cited_doc_versions is not None else intent.get("cited_doc_versions", [])
    return Trace(**common, answer=routed.answer, citations=routed.citations,
                 cited_doc_versions=cited, retrieved=routed.evidence_ids,
                 refused=routed.refused or not served, refusal_reason="invalid_input" if routed.reason == "input" else None,
                 top_score=None, score_margin=None, retriever_agreement=None,
                 mean_logprob=routed.checks.get("student_score"), groundedness=None, citation_valid=served,
                 retrieval_ms=0.0, prompt_tokens=routed.prompt_tokens, completion_tokens=routed.completion_tokens,
                 model=f"{student_name}/{version}" if served else "",
                 backend=_backend(routed) if served else "none", student_version=version if served else None)


def _backend(routed: RoutedAnswer) -> str:
    """What produced a served answer: 'replay', or 'open_book' (the student reading evidence)."""
    return "replay" if routed.route == "replay" else "open_book"


def conversation_turn(teacher, teacher_lock, message: str, history: list[dict], scope: str | None,
                      condense=None) -> Turn:
    """`message` made standalone against `history` (rag/conversation.py): condensed by the
    teacher's LLM when its backend has one (under `teacher_lock`: its model answers one call at a
    time), else by the rule; the teacher's retriever says whether the earlier turns' words move a
    longer message that refers back to another document, and whether the LLM's question finds
    the document the rule's does. `condense` replaces the teacher's own LLM (a benchmark's)."""
    generator = getattr(teacher, "generator", None)

    def teachers_llm(messages: list[dict]) -> str:
        with teacher_lock:
            return generator.chat(messages)

    @functools.lru_cache(maxsize=None)
    def first_hit(text: str):
        """Retrieval's best chunk for `text` (None: nothing found), asked once a turn per text: the
        rule's question is read by `shifted` and again by `agrees`."""
        hits = teacher.retriever.search(text, scope, k=1).hits
        return hits[0] if hits else None

    def best(*texts: str):
        try:
            return [first_hit(text) for text in texts]
        except (DistillError, AttributeError):  # a scope the corpus lacks; a team's RAG retrieves elsewhere
            return None

    def shifted(alone: str, joined: str) -> bool:
        found = best(alone, joined)
        if not found or found[1] is None:
            return False
        before, after = found
        if before is None:
            return True
        moved = before.chunk["doc_id"] != after.chunk["doc_id"]
        return moved and (after.dense_score or 0.0) - (before.dense_score or 0.0) >= CONVERSATION_SHIFT

    def agrees(rewritten: str, joined: str) -> bool:
        found = best(rewritten, joined)
        return bool(found and found[0] and found[1]) and found[0].chunk["doc_id"] == found[1].chunk["doc_id"]

    condense = condense or (teachers_llm if hasattr(generator, "chat") else None)
    return standalone_turn(message, history, condense, shifted, agrees)
