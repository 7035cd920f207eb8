"""The trace store's schema: the `Trace` record, and the migrations that build `traces.duckdb`, in
order. Every table and column carries its meaning as a comment (`_m015_comments`), which
`duckdb_columns()` reads back and docs/traces.md is generated from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Sequence

import duckdb

from distill.store.db import Migration


@dataclass
class Trace:
    """One answered query: what was asked, what came back, why it can be trusted, what it cost."""

    query_id: str
    scope: str | None
    query: str
    answer: str
    citations: list[str]
    cited_doc_versions: list[dict]
    retrieved: list[str]
    refused: bool
    refusal_reason: str | None
    route: str
    route_reason: str
    top_score: float | None
    score_margin: float | None
    retriever_agreement: float | None
    mean_logprob: float | None
    groundedness: float | None
    citation_valid: bool
    latency_ms: float
    retrieval_ms: float
    prompt_tokens: int
    completion_tokens: int
    model: str
    backend: str
    asked_at: datetime
    trace_id: str = ""
    answer_score: float | None = None
    collect_run_id: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    router_ms: float | None = None  # the router's own checks, generation excluded
    generation_ms: float | None = None
    checks: str | None = None  # JSON: each router check's score
    intent_id: str | None = None  # the student intent that covered the query
    student_version: str | None = None
    corpus_generation: int | None = None  # routed answers: the corpus generation the router checked against
    answerability: float | None = None  # the teacher's answerability score, 0 to 1
    answerability_threshold: float | None = None  # the threshold it was held to (refused below)
    nearest_topics: list[str] = field(default_factory=list)  # refusals: the topics named to the asker
    answerability_method: str | None = None  # how the threshold was set (answerability.METHODS, or 'setting')
    origin: str | None = None  # who asked: 'collect', 'import', 'service', 'ask' (interactive), 'logger'
    raw_message: str | None = None  # a conversation's turn: the last user message as written (query: standalone)
    rewrite_method: str | None = None  # how that turn was made standalone: 'none', 'llm' or 'rules' (conversation.py)
    conversation_hash: str | None = None  # the earlier turns' hash: turns of one conversation share it


def _m001_traces(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE traces (
            trace_id VARCHAR PRIMARY KEY,
            query_id VARCHAR NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL,
            asked_at TIMESTAMPTZ NOT NULL,
            scope VARCHAR,
            query VARCHAR NOT NULL,
            answer VARCHAR NOT NULL,
            citations VARCHAR[] NOT NULL,
            cited_doc_versions STRUCT(doc_id VARCHAR, version INTEGER)[] NOT NULL,
            retrieved VARCHAR[] NOT NULL,
            refused BOOLEAN NOT NULL,
            refusal_reason VARCHAR,
            route VARCHAR NOT NULL,
            route_reason VARCHAR NOT NULL,
            top_score DOUBLE,
            score_margin DOUBLE,
            retriever_agreement DOUBLE,
            mean_logprob DOUBLE,
            groundedness DOUBLE,
            citation_valid BOOLEAN NOT NULL,
            latency_ms DOUBLE NOT NULL,
            retrieval_ms DOUBLE NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            model VARCHAR NOT NULL,
            backend VARCHAR NOT NULL
        )""")


def _m002_collect_runs(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE collect_runs (
            run_id VARCHAR PRIMARY KEY,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            input VARCHAR NOT NULL,
            backend VARCHAR NOT NULL,
            queries_read INTEGER,
            answered INTEGER,
            skipped_existing INTEGER,
            bad_lines INTEGER
        )""")
    con.execute("ALTER TABLE traces ADD COLUMN collect_run_id VARCHAR")


def _m003_curation(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE curation_runs (
            run_id VARCHAR PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL,
            config JSON NOT NULL,
            cutoff TIMESTAMPTZ,
            traces_seen INTEGER NOT NULL,
            clusters INTEGER NOT NULL,
            train INTEGER NOT NULL,
            eval INTEGER NOT NULL,
            rejected INTEGER NOT NULL,
            leaked_eval_traces INTEGER NOT NULL,
            dataset_path VARCHAR,
            dataset_hash VARCHAR,
            examples INTEGER NOT NULL
        )""")
    con.execute("""
        CREATE TABLE clusters (
            run_id VARCHAR NOT NULL,
            cluster_id VARCHAR NOT NULL,
            scope VARCHAR,
            representative VARCHAR NOT NULL,
            wordings VARCHAR[] NOT NULL,
            traces INTEGER NOT NULL,
            frequency INTEGER NOT NULL,
            answer VARCHAR,
            agreement DOUBLE NOT NULL,
            cited_doc_versions STRUCT(doc_id VARCHAR, version INTEGER)[] NOT NULL,
            trained BOOLEAN NOT NULL,
            PRIMARY KEY (run_id, cluster_id)
        )""")
    con.execute("""
        CREATE TABLE curation (
            run_id VARCHAR NOT NULL,
            trace_id VARCHAR NOT NULL,
            cluster_id VARCHAR NOT NULL,
            decision VARCHAR NOT NULL,
            reason VARCHAR,
            PRIMARY KEY (run_id, trace_id)
        )""")


def _m004_answer_score(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("ALTER TABLE traces ADD COLUMN answer_score DOUBLE")


def _m005_nightly_runs(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE nightly_runs (
            run_id VARCHAR PRIMARY KEY,
            day DATE NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            status VARCHAR NOT NULL,
            reason VARCHAR,
            serving_before VARCHAR,
            candidate VARCHAR,
            figures JSON NOT NULL
        )""")


def _m006_router_columns(con: duckdb.DuckDBPyConnection) -> None:
    for column, kind in (("router_ms", "DOUBLE"), ("generation_ms", "DOUBLE"), ("checks", "JSON"),
                         ("cluster_id", "VARCHAR"), ("student_version", "VARCHAR")):
        con.execute(f"ALTER TABLE traces ADD COLUMN {column} {kind}")


def _m007_shadow(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE shadow_checks (
            trace_id VARCHAR NOT NULL,
            checked_at TIMESTAMPTZ NOT NULL,
            student_version VARCHAR NOT NULL,
            cluster_id VARCHAR NOT NULL,
            scope VARCHAR,
            query VARCHAR NOT NULL,
            student_answer VARCHAR NOT NULL,
            teacher_answer VARCHAR NOT NULL,
            agreement DOUBLE NOT NULL
        )""")
    con.execute("""
        CREATE TABLE withdrawn_clusters (
            student_version VARCHAR NOT NULL,
            cluster_id VARCHAR NOT NULL,
            withdrawn_at TIMESTAMPTZ NOT NULL,
            samples INTEGER NOT NULL,
            agreement DOUBLE NOT NULL,
            evidence JSON NOT NULL,
            PRIMARY KEY (student_version, cluster_id)
        )""")


def _m008_retrieved_doc_versions(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("ALTER TABLE clusters ADD COLUMN retrieved_doc_versions STRUCT(doc_id VARCHAR, version INTEGER)[]")


def _m009_eval_runs(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE eval_runs (
            run_id VARCHAR PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL,
            source VARCHAR NOT NULL,
            student_version VARCHAR,
            queries INTEGER NOT NULL,
            figures JSON NOT NULL
        )""")


def _m010_corpus_generation(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("ALTER TABLE traces ADD COLUMN corpus_generation INTEGER")


def _m011_answerability(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("ALTER TABLE traces ADD COLUMN answerability DOUBLE")
    con.execute("ALTER TABLE traces ADD COLUMN answerability_threshold DOUBLE")
    con.execute("ALTER TABLE traces ADD COLUMN nearest_topics VARCHAR[]")


def _m012_answerability_method_and_origin(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("ALTER TABLE traces ADD COLUMN answerability_method VARCHAR")
    con.execute("ALTER TABLE traces ADD COLUMN origin VARCHAR")


def _m013_feedback(con: duckdb.DuckDBPyConnection) -> None:
    """Users' ratings (feedback.py), with what was rated as it was shown, and how far each
    process's feedback journal has been folded in."""
    con.execute("""
        CREATE TABLE feedback (
            feedback_id VARCHAR PRIMARY KEY,
            trace_id VARCHAR NOT NULL,
            score DOUBLE NOT NULL,
            name VARCHAR,
            comment VARCHAR,
            source VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            received_by VARCHAR NOT NULL,
            route VARCHAR,
            backend VARCHAR,
            student_version VARCHAR,
            cluster_id VARCHAR,
            scope VARCHAR,
            query VARCHAR,
            answer VARCHAR,
            citations VARCHAR[]
        )""")
    con.execute("CREATE TABLE feedback_journals (path VARCHAR PRIMARY KEY, folded_bytes BIGINT NOT NULL)")


def _m014_open_book_shadow_checks(con: duckdb.DuckDBPyConnection) -> None:
    """Shadow checks of the open-book student's answers, which no intent covers: `cluster_id` may
    be NULL, and `route` says which route's answer was checked ('replay' or 'student')."""
    con.execute("ALTER TABLE shadow_checks ALTER COLUMN cluster_id DROP NOT NULL")
    con.execute("ALTER TABLE shadow_checks ADD COLUMN route VARCHAR")


def _m015_comments(con: duckdb.DuckDBPyConnection) -> None:
    """What each table and each `traces` column means, in the database itself (`duckdb_tables()`,
    `duckdb_columns()`), so any client can read it; docs/traces.md is generated from them."""
    tables = {
        "traces": "one row per answered query: what was asked, what came back, why it can be trusted, what it cost",
        "collect_runs": "one row per distill collect: input, backend, queries read, answered, already stored, "
                        "bad lines, start and finish",
        "curation_runs": "one row per distill curate: the config used, the cutoff, counts, the dataset path and hash",
        "clusters": "per curation run, one row per intent (wordings of one scope the teacher answered from the "
                    "same document with the same answer)",
        "curation": "one row per trace per curation run: its decision and, for a rejection, the rule that failed",
        "nightly_runs": "one row per distill nightly, with each finished stage's figures",
        "shadow_checks": "fast-route answers re-answered by RAG off the request path (router.shadow_share)",
        "withdrawn_clusters": "intents taken off a student version's fast path because shadow checks disagreed",
        "eval_runs": "one row per distill eval, with its figures (JSON)",
        "feedback": "users' ratings of answers, with what was rated as it was shown",
        "feedback_journals": "how far each process's feedback journal has been folded into feedback",
        "_migrations": "the schema migrations applied to this file, in order",
    }
    columns = {
        "traces": {
            "trace_id": "row id",
            "query_id": "idempotency key (unique: a rerun skips stored queries)",
            "created_at": "when the trace was written",
            "asked_at": "when the query was asked (its timestamp)",
            "scope": "the question's scope (tenant, product or website)",
            "query": "the question",
            "answer": "the answer; empty if refused (the asker reads \"The documents do not cover this. Nearest "
                      "topics: ...\")",
            "citations": "chunk ids the answer comes from (always among retrieved)",
            "cited_doc_versions": "[{doc_id, version}] of the cited chunks: what goes stale when a document changes",
            "retrieved": "chunk ids retrieved, best first",
            "refused": "true when the teacher refused (refusal_reason says why)",
            "refusal_reason": "no_evidence, injection, low_retrieval_score, unknown_name, not_answerable, "
                              "model_declined, ungrounded_answer; imported or http answers: empty_answer, declined",
            "route": "the route that answered: rag for batch collection, imports and the router's fallback; "
                     "replay or student from the router",
            "route_reason": "collect for batch collection (import, logged for imported and logged traces); from the "
                            "router served, or for rag the check that failed",
            "top_score": "dense cosine of the best chunk",
            "score_margin": "margin of the best chunk's dense cosine over the next",
            "retriever_agreement": "overlap of the dense and BM25 top 5 (0 to 1)",
            "mean_logprob": "mean token log-probability of the answer (LLM backends)",
            "groundedness": "share of answer words found in the cited chunks",
            "citation_valid": "true when every citation is among retrieved",
            "latency_ms": "end-to-end time, ms",
            "retrieval_ms": "retrieval time, ms",
            "prompt_tokens": "prompt tokens: cost (0: no LLM)",
            "completion_tokens": "completion tokens: cost (0: no LLM)",
            "model": "the model that answered: provenance",
            "backend": "the backend that answered: provenance",
            "collect_run_id": "the collect_runs row that wrote it",
            "answer_score": "the generator's own confidence, 0 to 1 (extractive: the chosen sentence's similarity; "
                            "LLM: exp of mean_logprob)",
            "router_ms": "router traces: time in the checks, generation excluded, ms",
            "generation_ms": "router traces: time generating, ms",
            "checks": "router traces: each check's score (JSON)",
            "cluster_id": "router traces: the intent that covered the question",
            "student_version": "router traces: the student version that answered",
            "corpus_generation": "router traces: the corpus generation (index/dense.json) the router checked "
                                 "freshness against",
            "answerability": "does the evidence answer the question (0 to 1)",
            "answerability_threshold": "the threshold the teacher held answerability to (refused below it)",
            "nearest_topics": "for a refusal, the topics named to the asker",
            "answerability_method": "how the threshold was set: documents_questions, probes, default, setting",
            "origin": "who asked: collect, import, logger (a TraceLogger), service (a router or distill serve), "
                      "ask (distill ask: never moves curate's cutoff)",
        },
        "collect_runs": {
            "run_id": "the run's id (traces.collect_run_id)",
            "started_at": "when the run started",
            "finished_at": "when it finished (NULL: still running, or killed)",
            "input": "the query log it read",
            "backend": "the teacher backend that answered",
            "queries_read": "queries read from the input",
            "answered": "queries answered and stored as new traces",
            "skipped_existing": "queries already stored (a rerun resumes)",
            "bad_lines": "input lines that could not be read (skipped)",
        },
        "curation": {
            "run_id": "the curation run",
            "trace_id": "the trace decided on",
            "cluster_id": "its intent in this run (clusters.cluster_id)",
            "decision": "train, eval (held out after the cutoff) or reject",
            "reason": "for a rejection, the first curation rule that failed (docs/curation.md)",
        },
        "clusters": {
            "run_id": "the curation run",
            "cluster_id": "the intent's id",
            "scope": "the scope its wordings were asked in",
            "representative": "the intent's representative wording",
            "wordings": "its distinct wordings",
            "traces": "its traces",
            "frequency": "traces of the intent's need (same document, any answer) in the window before the cutoff",
            "answer": "its agreed (majority) answer; NULL when that is a refusal",
            "agreement": "share of the intent's traces that give its majority answer",
            "cited_doc_versions": "[{doc_id, version}] its training traces cite: what makes it stale",
            "trained": "true when the intent is in the training set",
            "retrieved_doc_versions": "[{doc_id, version}] its training traces retrieved: a changed one now "
                                      "among RAG's evidence for a question makes it stale too",
        },
        "curation_runs": {
            "run_id": "the run's id",
            "created_at": "when it ran",
            "config": "the curate settings it used (JSON)",
            "cutoff": "questions asked after it are held out for evaluation",
            "traces_seen": "traces read",
            "clusters": "intents found",
            "train": "traces decided train",
            "eval": "traces held out for evaluation",
            "rejected": "traces rejected",
            "leaked_eval_traces": "eval traces whose exact wording also occurs before the cutoff",
            "dataset_path": "the training set it saved (datasets/<run_id>/)",
            "dataset_hash": "the training set's content hash",
            "examples": "training examples in the set",
        },
        "nightly_runs": {
            "run_id": "the run's id",
            "day": "the day it ran for (a finished day is not run again without --force)",
            "started_at": "when it started",
            "finished_at": "when it finished",
            "status": "running, promoted, kept or failed",
            "reason": "why it promoted, kept or failed",
            "serving_before": "the version that served when the run started",
            "candidate": "the version this run trained",
            "figures": "JSON: each finished stage's figures, including both models' scores at the gate",
        },
    }
    for table, text in tables.items():
        con.execute(f"COMMENT ON TABLE {table} IS '{_sql_text(text)}'")
    for table, meanings in columns.items():
        for column, text in meanings.items():
            con.execute(f"COMMENT ON COLUMN {table}.{column} IS '{_sql_text(text)}'")


def _m016_intents(con: duckdb.DuckDBPyConnection) -> None:
    """One word for one thing: what curation groups wordings into was a cluster in the tables, an
    intent in the docs and settings; it is an intent everywhere now (#25). Comments follow the
    renamed columns; the ones that named the old names are written again."""
    con.execute("ALTER TABLE clusters RENAME TO intents")
    con.execute("ALTER TABLE withdrawn_clusters RENAME TO withdrawn_intents")
    con.execute("ALTER TABLE curation_runs RENAME COLUMN clusters TO intents")
    for table in ("intents", "curation", "traces", "shadow_checks", "withdrawn_intents", "feedback"):
        con.execute(f"ALTER TABLE {table} RENAME COLUMN cluster_id TO intent_id")
    con.execute("COMMENT ON COLUMN curation.intent_id IS 'its intent in this run (intents.intent_id)'")


def _m017_conversations(con: duckdb.DuckDBPyConnection) -> None:
    """A turn of a conversation is answered as a standalone question (rag/conversation.py): `query`
    holds that question, and these what it was made from."""
    for column, meaning in (("raw_message", "a conversation's turn: the last user message as written (query holds "
                                            "the standalone question routed and answered); NULL: no conversation"),
                            ("rewrite_method", "how the turn was made standalone: none (self-contained), llm (condensed by "
                                               "the LLM) or rules (joined with the earlier user turns: RAG only, never "
                                               "trained on); NULL: no conversation"),
                            ("conversation_hash", "hash of the turns before this one: turns of one conversation share it")):
        con.execute(f"ALTER TABLE traces ADD COLUMN {column} VARCHAR")
        con.execute(f"COMMENT ON COLUMN traces.{column} IS '{_sql_text(meaning)}'")


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


TRACE_MIGRATIONS: list[Migration] = [_m001_traces, _m002_collect_runs, _m003_curation, _m004_answer_score,
                                     _m005_nightly_runs, _m006_router_columns, _m007_shadow,
                                     _m008_retrieved_doc_versions, _m009_eval_runs, _m010_corpus_generation,
                                     _m011_answerability, _m012_answerability_method_and_origin, _m013_feedback,
                                     _m014_open_book_shadow_checks, _m015_comments, _m016_intents,
                                     _m017_conversations]


FEEDBACK_COLUMNS = ["feedback_id", "trace_id", "score", "name", "comment", "source", "created_at", "received_by",
                    "route", "backend", "student_version", "intent_id", "scope", "query", "answer", "citations"]


TRACE_COLUMNS = [f.name for f in fields(Trace)]  # the migrations make the same columns: tests/test_store.py holds them together


def trace_table(traces: Sequence[Trace]):
    """Traces as an Arrow table in the store's column order, the first of each query_id kept. Built
    column by column: four times faster than from a row of dicts each (`pa.Table.from_pylist`)."""
    import pyarrow as pa

    unique = list({t.query_id: t for t in reversed(traces)}.values())[::-1]
    columns = {name: [getattr(t, name) for t in unique] for name in TRACE_COLUMNS}
    columns["trace_id"] = [t.trace_id or t.query_id for t in unique]
    return pa.Table.from_pydict(columns)


RENAMED_FIELDS = {"cluster_id": "intent_id"}  # renamed by _m016: what a segment or journal from before calls it


def current_fields(row: dict) -> dict:
    """`row` (a record a process from before a rename wrote to a segment or journal) with today's
    field names.

        >>> current_fields({"cluster_id": "c0", "query": "q"})
        {'query': 'q', 'intent_id': 'c0'}
    """
    for old, new in RENAMED_FIELDS.items():
        if old in row:
            row[new] = row.pop(old)
    return row


def trace_from_row(row: dict) -> Trace:
    """A trace read back from a segment (its times were written as ISO strings)."""
    for name in ("asked_at", "created_at"):
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name])
    return Trace(**row)


# What curation reads: the same statement runs on the DuckDB file and, unchanged, on a DuckLake
# catalog (where `traces` is the lake's table, see TraceLake).
CURATION_INPUT = """
    SELECT trace_id, query_id, asked_at, scope, query, answer, citations, cited_doc_versions, retrieved, refused,
           refusal_reason, top_score, score_margin, mean_logprob, answer_score, groundedness, citation_valid,
           answerability, origin, rewrite_method
    FROM traces WHERE route = 'rag' ORDER BY asked_at, trace_id"""


RATED_TRACE_COLUMNS = ["trace_id", "route", "backend", "student_version", "intent_id", "scope", "query", "answer",
                       "citations", "refused", "answerability", "corpus_generation"]
