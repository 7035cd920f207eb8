"""DuckDB storage: the trace store and the corpus tables. The only module that writes SQL.

Each database's schema is an ordered list of migration functions (the simonw/llm pattern). Opening a
database applies the ones it has not seen and records each in a `_migrations` table, so a file
written by an older distill upgrades in place, and a file written by a newer one is refused rather
than misread:

    >>> store = TraceStore(Path("traces/traces.duckdb"))    # creates or upgrades the file
    >>> store.append([trace])                               # one transaction per batch
    1
    >>> store.append([trace])                               # same query_id: skipped, not duplicated
    0

A batch is one transaction, so a crash or `kill -9` loses at most the batch being written, and
`query_id` is unique, so re-running a collection resumes instead of duplicating.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import duckdb

from distill.errors import DistillError

logger = logging.getLogger("distill.store")

Migration = Callable[[duckdb.DuckDBPyConnection], None]
WAIT_S = 60.0  # how long a command waits for another to finish writing the trace store (each holds it briefly)


def _open(path: Path, read_only: bool = False, wait_s: float = 0.0) -> duckdb.DuckDBPyConnection:
    """A connection; while another process writes the file (DuckDB lets one at a time), try again
    for up to `wait_s` seconds before saying so."""
    if read_only and not path.exists():
        raise DistillError(f"{path} does not exist; run the step that creates it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise DistillError(f"{path} is not a readable DuckDB file ({_first_line(err)}); move it aside and "
                                   f"rerun") from None
            if time.monotonic() >= deadline:
                raise DistillError(f"{path} is in use by another process{f' (waited {wait_s:.0f} s)' if wait_s else ''}; "
                                   f"wait for it to finish") from None
            time.sleep(0.2)
        except duckdb.Error as err:
            raise DistillError(f"{path} is not a readable DuckDB file ({_first_line(err)}); move it aside and rerun") from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@contextlib.contextmanager
def _transaction(cur: duckdb.DuckDBPyConnection):
    """All of the block's writes or none: a crash or kill inside it leaves nothing half-written."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def _migrate(con: duckdb.DuckDBPyConnection, path: Path, migrations: Sequence[Migration]) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ)")
    applied = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
    known = {m.__name__ for m in migrations}
    newer = sorted(applied - known)
    if newer:
        raise DistillError(
            f"{path} has schema migration '{newer[0]}' from a newer distill; upgrade distill to read it")
    for migration in migrations:
        if migration.__name__ in applied:
            continue
        with _transaction(con):
            migration(con)
            con.execute("INSERT INTO _migrations VALUES (?, now())", [migration.__name__])


# --------------------------------------------------------------------------------------------
# Trace store
# --------------------------------------------------------------------------------------------

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
    cluster_id: str | None = None  # the student intent that covered the query
    student_version: str | None = None
    corpus_generation: int | None = None  # routed answers: the corpus generation the router checked against
    answerability: float | None = None  # the teacher's answerability score, 0 to 1
    answerability_threshold: float | None = None  # the threshold it was held to (refused below)
    nearest_topics: list[str] = field(default_factory=list)  # refusals: the topics named to the asker
    answerability_method: str | None = None  # how the threshold was set (answerability.METHODS, or 'setting')
    origin: str | None = None  # who asked: 'collect', 'import', 'service', 'ask' (interactive), 'logger'


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


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


TRACE_MIGRATIONS: list[Migration] = [_m001_traces, _m002_collect_runs, _m003_curation, _m004_answer_score,
                                     _m005_nightly_runs, _m006_router_columns, _m007_shadow,
                                     _m008_retrieved_doc_versions, _m009_eval_runs, _m010_corpus_generation,
                                     _m011_answerability, _m012_answerability_method_and_origin, _m013_feedback,
                                     _m014_open_book_shadow_checks, _m015_comments]

FEEDBACK_COLUMNS = ["feedback_id", "trace_id", "score", "name", "comment", "source", "created_at", "received_by",
                    "route", "backend", "student_version", "cluster_id", "scope", "query", "answer", "citations"]

_TRACE_COLUMNS = [
    "trace_id", "query_id", "created_at", "asked_at", "scope", "query", "answer", "citations",
    "cited_doc_versions", "retrieved", "refused", "refusal_reason", "route", "route_reason",
    "top_score", "score_margin", "retriever_agreement", "mean_logprob", "groundedness",
    "citation_valid", "latency_ms", "retrieval_ms", "prompt_tokens", "completion_tokens", "model",
    "backend", "collect_run_id", "answer_score", "router_ms", "generation_ms", "checks", "cluster_id",
    "student_version", "corpus_generation", "answerability", "answerability_threshold", "nearest_topics",
    "answerability_method", "origin",
]


def trace_table(traces: Sequence[Trace]):
    """Traces as an Arrow table in the store's column order, the first of each query_id kept. Built
    column by column: four times faster than from a row of dicts each (`pa.Table.from_pylist`)."""
    import pyarrow as pa

    unique = list({t.query_id: t for t in reversed(traces)}.values())[::-1]
    columns = {name: [getattr(t, name) for t in unique] for name in _TRACE_COLUMNS}
    columns["trace_id"] = [t.trace_id or t.query_id for t in unique]
    return pa.Table.from_pydict(columns)


def _insert_table(cur: duckdb.DuckDBPyConnection, batch) -> int:
    """Insert the rows of a `trace_table` whose query_id is not stored yet (inside the caller's
    transaction); returns how many. An anti-join rather than ON CONFLICT DO NOTHING: the same
    result, four times faster."""
    return cur.execute(f"INSERT INTO traces ({', '.join(_TRACE_COLUMNS)}) "
                       f"SELECT * FROM batch ANTI JOIN traces USING (query_id)").fetchone()[0]


def _insert_traces(cur: duckdb.DuckDBPyConnection, traces: Sequence[Trace]) -> int:
    return _insert_table(cur, trace_table(traces)) if traces else 0


def _insert_shadow_check(cur: duckdb.DuckDBPyConnection, row: dict) -> None:
    """One shadow check, unless that trace was already checked against that student version."""
    cur.execute("INSERT INTO shadow_checks BY NAME SELECT * FROM (SELECT ? AS trace_id, "
                "coalesce(CAST(? AS TIMESTAMPTZ), now()) AS checked_at, ? AS student_version, ? AS cluster_id, "
                "? AS scope, ? AS query, ? AS student_answer, ? AS teacher_answer, ? AS agreement, ? AS route) AS new "
                "WHERE NOT EXISTS (SELECT 1 FROM shadow_checks s WHERE s.trace_id = new.trace_id "
                "AND s.student_version = new.student_version)",
                [row["trace_id"], row.get("checked_at"), row["student_version"], row["cluster_id"], row["scope"],
                 row["query"], row["student_answer"], row["teacher_answer"], row["agreement"], row.get("route")])


def _insert_withdrawal(cur: duckdb.DuckDBPyConnection, student_version: str, cluster_id: str, samples: int,
                       agreement: float, evidence: list[dict], withdrawn_at: str | None = None) -> None:
    cur.execute("INSERT INTO withdrawn_clusters VALUES (?, ?, coalesce(CAST(? AS TIMESTAMPTZ), now()), ?, ?, ?) "
                "ON CONFLICT DO NOTHING", [student_version, cluster_id, withdrawn_at, samples, agreement,
                                           json.dumps(evidence)])


def _insert_feedback(cur: duckdb.DuckDBPyConnection, ratings: Sequence[dict]) -> int:
    """Ratings whose feedback_id is not stored yet (inside the caller's transaction); returns how many."""
    import pyarrow as pa

    unique = list({r["feedback_id"]: r for r in reversed(ratings)}.values())
    if not unique:
        return 0
    batch = pa.Table.from_pydict({name: [r.get(name) for r in unique] for name in FEEDBACK_COLUMNS})
    return cur.execute(f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) "
                       f"SELECT * REPLACE (CAST(created_at AS TIMESTAMPTZ) AS created_at) FROM batch "
                       f"ANTI JOIN feedback USING (feedback_id)").fetchone()[0]


def _trace(row: dict) -> Trace:
    """A trace read back from a segment (its times were written as ISO strings)."""
    for name in ("asked_at", "created_at"):
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name])
    return Trace(**row)


# The curation run a query names (`run` with its cutoff): the one given as the first parameter, or
# the latest when that is NULL.
_CURATION_RUN = """
    WITH run AS (SELECT run_id, cutoff FROM curation_runs WHERE run_id = coalesce(?, (
        SELECT run_id FROM curation_runs ORDER BY created_at DESC LIMIT 1)))"""


# What curation reads: the same statement runs on the DuckDB file and, unchanged, on a DuckLake
# catalog (where `traces` is the lake's table, see TraceLake).
CURATION_INPUT = """
    SELECT trace_id, query_id, asked_at, scope, query, answer, citations, cited_doc_versions, retrieved, refused,
           refusal_reason, top_score, score_margin, mean_logprob, answer_score, groundedness, citation_valid,
           answerability, origin
    FROM traces WHERE route = 'rag' ORDER BY asked_at, trace_id"""

# A lake row is a trace plus its partition key `day` (the UTC date it was asked).
_LAKE_SELECT = ", ".join(_TRACE_COLUMNS) + ", CAST(timezone('UTC', asked_at) AS DATE) AS day"


def _figures_parsed(rows: list[dict]) -> list[dict]:
    return [{**row, "figures": json.loads(row["figures"])} for row in rows]


def _extension_path(name: str) -> str:
    """The file of a DuckDB extension shipped as the PyPI package `duckdb-extension-<name>` (at
    duckdb's own version): `INSTALL` would download it, and this machine may have no internet."""
    import importlib

    package = f"duckdb_extension_{name}"
    try:
        module = importlib.import_module(package)
    except ImportError:
        module = None
    path = (Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
            if module else None)
    if path is None or not path.exists():
        raise DistillError(f"the DuckDB {name} extension for duckdb {duckdb.__version__} is not installed; "
                           f"pip install duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}")
    return str(path)


@dataclass(frozen=True)
class LakeLocation:
    """Where a DuckLake trace catalog lives: `catalog` is its metadata database (a local
    `.ducklake` file, or `postgres:dbname=... host=...` for many writers), `data_path` the folder
    or object-store prefix (`s3://bucket/traces/`) that holds its Parquet files."""

    catalog: str
    data_path: str


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _attach_lake(cur: duckdb.DuckDBPyConnection, lake: LakeLocation) -> None:
    """Attach the catalog as `lake`. Rows are always written to Parquet (no inlining into the
    metadata database), so every trace lands in a `day=.../scope=.../` file that any Parquet
    reader can open."""
    cur.execute("SET enable_progress_bar = false")  # a long push or pull must not draw over the CLI's own progress
    cur.execute(f"LOAD '{_extension_path('ducklake')}'")
    if "://" in lake.data_path:  # s3://, gs://, az://...: credentials come from a persistent DuckDB secret
        cur.execute(f"LOAD '{_extension_path('httpfs')}'")
    else:
        Path(lake.data_path).mkdir(parents=True, exist_ok=True)
    if lake.catalog.startswith("postgres:"):
        cur.execute(f"LOAD '{_extension_path('postgres_scanner')}'")
    elif ":" not in lake.catalog:
        Path(lake.catalog).parent.mkdir(parents=True, exist_ok=True)
    try:
        cur.execute(f"ATTACH {_literal('ducklake:' + lake.catalog)} AS lake "
                    f"(DATA_PATH {_literal(lake.data_path)}, DATA_INLINING_ROW_LIMIT 0)")  # ATTACH takes no parameters
    except duckdb.Error as err:
        raise DistillError(f"cannot open the trace lake {lake.catalog} ({_first_line(err)}); "
                           f"check lake.catalog and lake.data_path") from None


class TraceLake:
    """Read side of the trace lake: curation's own SQL, run over the lake's Parquet files.

        >>> with TraceLake(LakeLocation("lake/traces.ducklake", "lake/data")) as lake:
        ...     rows = lake.curation_input()
    """

    def __init__(self, lake: LakeLocation):
        self.lake = lake
        self._con = duckdb.connect()
        try:
            _attach_lake(self._con, lake)
            self._con.execute("USE lake")
            if not self._con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'lake' "
                                     "AND table_name = 'traces'").fetchone()[0]:
                raise DistillError(f"the trace lake {lake.catalog} holds no traces; run `distill lake push` first")
        except BaseException:
            self._con.close()
            raise

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "TraceLake":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def count(self) -> int:
        return self._con.execute("SELECT count(*) FROM traces").fetchone()[0]

    def partitions(self) -> list[dict]:
        """Rows per (day, scope) partition, as a person auditing the lake would ask for them."""
        result = self._con.execute("SELECT day, scope, count(*) AS traces FROM traces GROUP BY ALL ORDER BY ALL")
        return [dict(zip(("day", "scope", "traces"), row)) for row in result.fetchall()]

    def curation_input(self) -> list[dict]:
        result = self._con.execute(CURATION_INPUT)
        names = [d[0] for d in result.description]
        return [dict(zip(names, row)) for row in result.fetchall()]


class TraceStore:
    """The DuckDB trace store. Thread-safe appends; one process may write a file at a time."""

    def __init__(self, path: Path, migrations: Sequence[Migration] = TRACE_MIGRATIONS, wait_s: float | None = None):
        """Opening folds in the segments services wrote beside the file (see `SegmentLog`). A file
        another command is writing is waited for, `wait_s` seconds at most (default `WAIT_S`)."""
        self.path = Path(path)
        self._con = _open(self.path, wait_s=WAIT_S if wait_s is None else wait_s)
        self._lock = threading.Lock()
        try:
            _migrate(self._con, self.path, migrations)
            if migrations is TRACE_MIGRATIONS:
                self.folded = self.fold_segments(segment_folder(self.path))
                self.folded_feedback = self.fold_feedback(feedback_folder(self.path))
        except BaseException:
            self._con.close()
            raise

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "TraceStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, traces: Sequence[Trace]) -> int:
        """Write a batch in one transaction; traces whose query_id is already stored are skipped.

        Returns the number of new rows."""
        if not traces:
            return 0
        with self._lock:
            cur = self._con.cursor()
            with _transaction(cur):
                return _insert_traces(cur, traces)

    def append_table(self, table) -> int:
        """`append` for traces already in a `trace_table` (built, say, in another process)."""
        if table.num_rows == 0:
            return 0
        with self._lock:
            cur = self._con.cursor()
            with _transaction(cur):
                return _insert_table(cur, table)

    def fold_segments(self, folder: Path) -> int:
        """Move the records of finished segments (and of those a dead process left open) into the
        store, one transaction per segment, then remove the file; returns the traces added. A
        segment folded twice (a crash between commit and removal) adds nothing the second time."""
        added = 0
        for path in finished_segments(folder):
            records = read_segment(path)
            with self._lock:
                cur = self._con.cursor()
                with _transaction(cur):
                    added += _insert_traces(cur, [_trace(r["row"]) for r in records if r["kind"] == "trace"])
                    for record in records:
                        if record["kind"] == "shadow_check":
                            _insert_shadow_check(cur, record["row"])
                        elif record["kind"] == "withdrawal":
                            row = record["row"]
                            _insert_withdrawal(cur, row["student_version"], row["cluster_id"], row["samples"],
                                               row["agreement"], row["evidence"], row.get("withdrawn_at"))
            path.unlink()
        return added

    def fold_feedback(self, folder: Path) -> int:
        """Add the lines of every process's feedback journal (`FeedbackJournal`) written since the
        last fold, one transaction per journal with its new offset; returns the ratings added. The
        journals stay: running routers read them. A rating folded twice is stored once."""
        added = 0
        for path in journal_files(folder):
            name = path.name
            with self._lock:
                cur = self._con.cursor()
                start = cur.execute("SELECT folded_bytes FROM feedback_journals WHERE path = ?", [name]).fetchone()
                ratings, end = read_journal(path, start[0] if start else 0)
                if start and end == start[0]:
                    continue
                with _transaction(cur):
                    added += _insert_feedback(cur, ratings)
                    cur.execute("INSERT OR REPLACE INTO feedback_journals VALUES (?, ?)", [name, end])
        return added

    def add_journaled_feedback(self, ratings: Sequence[dict], journal: Path, end: int) -> int:
        """Store ratings this process has just journaled (`FeedbackJournal.append`), and mark the
        journal folded up to `end`, in one transaction: what `fold_feedback` would do, without
        reading the lines back. Returns the ratings added."""
        with self._lock:
            cur = self._con.cursor()
            with _transaction(cur):
                added = _insert_feedback(cur, ratings)
                cur.execute("INSERT OR REPLACE INTO feedback_journals VALUES (?, ?)", [Path(journal).name, end])
        return added

    def feedback(self) -> list[dict]:
        """Every stored rating, oldest first (what curation and tuning weigh)."""
        return self.sql(f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback ORDER BY created_at, feedback_id")

    def _rows_for(self, column: str, values: Sequence[str], select: str) -> list[dict]:
        """`select` (reading a table `wanted` of one column) run over the distinct `values`, as dicts."""
        import pyarrow as pa

        wanted = pa.table({column: list(dict.fromkeys(values))})
        with self._lock:
            cur = self._con.cursor()
            cur.register("wanted", wanted)
            try:
                result = cur.execute(select)
                names = [d[0] for d in result.description]
                return [dict(zip(names, row)) for row in result.fetchall()]
            finally:
                cur.unregister("wanted")

    def stored_feedback_ids(self, feedback_ids: Sequence[str]) -> set[str]:
        """Those of `feedback_ids` the feedback table already holds."""
        rows = self._rows_for("feedback_id", feedback_ids, "SELECT feedback_id FROM feedback JOIN wanted USING (feedback_id)")
        return {row["feedback_id"] for row in rows}

    def ratings_by_route(self) -> list[dict]:
        """Users' ratings by how the rated answer was served (teacher, replay, student): how many,
        how many wrong (score below 0), and the mean score."""
        return self.sql("""
            SELECT CASE WHEN route = 'rag' THEN 'teacher' WHEN backend = 'replay' THEN 'replay' ELSE 'student' END AS route,
                   count(*) AS rated, count(*) FILTER (WHERE score < 0) AS rated_wrong,
                   round(count(*) FILTER (WHERE score < 0) / count(*), 4) AS share_rated_wrong,
                   round(avg(score), 4) AS mean_score
            FROM feedback GROUP BY 1 ORDER BY 1""")

    def traces_by_id(self, trace_ids: Sequence[str]) -> dict[str, dict]:
        """What a rating needs of each stored trace it names (unknown ids are left out)."""
        rows = self._rows_for("trace_id", trace_ids, f"SELECT {', '.join(RATED_TRACE_COLUMNS)} FROM traces "
                                                     f"JOIN wanted USING (trace_id)")
        return {row["trace_id"]: row for row in rows}

    def answered(self, query_ids: Iterable[str]) -> set[str]:
        """The subset of `query_ids` that already has a trace (for resuming a collection)."""
        ids = list(query_ids)
        if not ids:
            return set()
        with self._lock:
            rows = self._con.cursor().execute(
                "SELECT query_id FROM traces WHERE query_id IN (SELECT unnest(?))", [ids]).fetchall()
        return {r[0] for r in rows}

    def count(self) -> int:
        with self._lock:
            return self._con.cursor().execute("SELECT count(*) FROM traces").fetchone()[0]

    def start_run(self, run_id: str, input_name: str, backend: str) -> None:
        with self._lock:
            self._con.cursor().execute(
                "INSERT INTO collect_runs (run_id, started_at, input, backend) VALUES (?, now(), ?, ?)",
                [run_id, input_name, backend])

    def finish_run(self, run_id: str, queries_read: int, answered: int, skipped_existing: int, bad_lines: int) -> None:
        with self._lock:
            self._con.cursor().execute(
                "UPDATE collect_runs SET finished_at = now(), queries_read = ?, answered = ?, "
                "skipped_existing = ?, bad_lines = ? WHERE run_id = ?",
                [queries_read, answered, skipped_existing, bad_lines, run_id])

    def curation_input(self) -> list[dict]:
        """Every teacher trace with what the curation rules read, oldest first."""
        return self.sql(CURATION_INPUT)

    def push_to_lake(self, lake: "LakeLocation") -> int:
        """Append the traces the lake does not hold yet (by trace_id) in one lake transaction, so a
        push killed halfway leaves nothing behind and a rerun sends the rest. Returns the rows sent.

        Columns added to `traces` by later migrations are added to the lake table first."""
        with self._lock:
            cur = self._con.cursor()
            _attach_lake(cur, lake)
            try:
                lake_columns = {r[0] for r in cur.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_catalog = 'lake' "
                    "AND table_name = 'traces'").fetchall()}
                if not lake_columns:
                    cur.execute(f"CREATE TABLE lake.traces AS SELECT {_LAKE_SELECT} FROM traces LIMIT 0")
                    cur.execute("ALTER TABLE lake.traces SET PARTITIONED BY (day, scope)")
                else:
                    types = dict(cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                                             "WHERE table_catalog = current_database() AND table_name = 'traces'").fetchall())
                    for column in _TRACE_COLUMNS:
                        if column not in lake_columns:
                            cur.execute(f"ALTER TABLE lake.traces ADD COLUMN {column} {types[column]}")
                with _transaction(cur):
                    sent = cur.execute(f"INSERT INTO lake.traces BY NAME SELECT {_LAKE_SELECT} FROM traces "
                                       f"WHERE trace_id NOT IN (SELECT trace_id FROM lake.traces)").fetchone()[0]
                return sent
            finally:
                cur.execute("DETACH lake")

    def pull_from_lake(self, lake: "LakeLocation") -> int:
        """Copy into this store the lake's traces it lacks (by query_id), so that the audit joins
        (`explain`, the eval window) find every trace a lake curation decided on. Returns rows copied."""
        with self._lock:
            cur = self._con.cursor()
            _attach_lake(cur, lake)
            try:
                with _transaction(cur):
                    copied = cur.execute(
                        f"INSERT INTO traces ({', '.join(_TRACE_COLUMNS)}) SELECT {', '.join(_TRACE_COLUMNS)} "
                        f"FROM lake.traces ANTI JOIN traces USING (query_id)").fetchone()[0]
                return copied
            finally:
                cur.execute("DETACH lake")

    def write_curation(self, run: dict, clusters: list[dict], decisions: list[dict]) -> None:
        """Store one curation run, its clusters and one decision per trace, all in one transaction."""
        import pyarrow as pa

        cluster_rows = pa.Table.from_pylist([{**c, "run_id": run["run_id"]} for c in clusters])  # noqa: F841
        decision_rows = pa.Table.from_pylist([{**d, "run_id": run["run_id"]} for d in decisions])  # noqa: F841
        with self._lock:
            cur = self._con.cursor()
            with _transaction(cur):
                for table in ("curation", "clusters", "curation_runs"):
                    cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run["run_id"]])
                columns = list(run)
                cur.execute(f"INSERT INTO curation_runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                            [run[c] for c in columns])
                if clusters:
                    cur.execute("INSERT INTO clusters BY NAME SELECT * FROM cluster_rows")
                if decisions:
                    cur.execute("INSERT INTO curation BY NAME SELECT * FROM decision_rows")

    def held_out(self, run_id: str | None = None) -> list[dict]:
        """Every teacher trace at or after a curation run's cutoff (default: the latest run), most
        recent first: the traffic a student trained from that run has never seen, high-risk and
        unanswerable questions included, with the cluster each fell in and that cluster's answer."""
        return self.sql(_CURATION_RUN + """
            SELECT t.trace_id, t.query_id, t.asked_at, t.scope, t.query, t.answer, t.refused, t.citations,
                   t.latency_ms, t.prompt_tokens, t.completion_tokens,
                   c.cluster_id, c.decision, c.reason, k.answer AS cluster_answer, run.run_id
            FROM run JOIN curation c USING (run_id) JOIN traces t USING (trace_id)
            LEFT JOIN clusters k ON k.run_id = c.run_id AND k.cluster_id = c.cluster_id
            WHERE t.asked_at >= run.cutoff ORDER BY t.asked_at DESC, t.trace_id""", [run_id])

    def refusals(self, recent: int = 10_000) -> list[dict]:
        """What the teacher did with the latest `recent` questions it answered (collected, served
        by RAG, imported): one row per (method of its threshold, refusal reason, or NULL when
        answered) with the count."""
        return self.sql("""
            SELECT answerability_method AS method, refusal_reason AS reason, count(*) AS n
            FROM (SELECT * FROM traces WHERE route = 'rag' ORDER BY asked_at DESC LIMIT ?)
            GROUP BY ALL ORDER BY n DESC""", [recent])

    def retrieval_examples(self, run_id: str | None = None) -> list[dict]:
        """The traces of a curation run (default: the latest) with what the retriever tuner reads:
        the question, the chunks the teacher cited and retrieved, the curation decision, and whether
        the trace falls after the run's cutoff (held out)."""
        return self.sql(_CURATION_RUN + """
            SELECT t.query_id, t.scope, t.query, t.citations, t.retrieved, t.refused, c.decision,
                   t.asked_at >= run.cutoff AS held_out, run.run_id
            FROM run JOIN curation c USING (run_id) JOIN traces t USING (trace_id)
            ORDER BY t.asked_at, t.trace_id""", [run_id])

    def cluster_answers(self, run_id: str) -> dict[str, str | None]:
        """cluster_id -> the answer its traces agreed on (None: a refusal), for one curation run."""
        rows = self.sql("SELECT cluster_id, answer FROM clusters WHERE run_id = ?", [run_id])
        return {row["cluster_id"]: row["answer"] for row in rows}

    def add_eval_run(self, run_id: str, source: str, student_version: str | None, queries: int,
                     figures: dict) -> None:
        self.sql("INSERT INTO eval_runs VALUES (?, now(), ?, ?, ?, ?)",
                 [run_id, source, student_version, queries, json.dumps(figures, default=str)])

    def eval_runs(self, limit: int = 10) -> list[dict]:
        """The latest evaluation runs, newest first, figures parsed."""
        return _figures_parsed(self.sql("SELECT * FROM eval_runs ORDER BY created_at DESC LIMIT ?", [limit]))

    def recent_nightly_runs(self, limit: int = 10) -> list[dict]:
        """The latest nightly runs, newest first, figures parsed."""
        return _figures_parsed(self.sql("SELECT * FROM nightly_runs ORDER BY started_at DESC LIMIT ?", [limit]))

    def start_nightly(self, run_id: str, day, serving: str | None) -> None:
        self.sql("INSERT INTO nightly_runs (run_id, day, started_at, status, serving_before, figures) "
                 "VALUES (?, ?, now(), 'running', ?, '{}')", [run_id, day, serving])

    def update_nightly(self, run_id: str, figures: dict) -> None:
        self.sql("UPDATE nightly_runs SET figures = ?, candidate = ? WHERE run_id = ?",
                 [json.dumps(figures, default=str), figures.get("train", {}).get("version"), run_id])

    def finish_nightly(self, run_id: str, status: str, reason: str, figures: dict) -> None:
        self.update_nightly(run_id, figures)
        self.sql("UPDATE nightly_runs SET finished_at = now(), status = ?, reason = ? WHERE run_id = ?",
                 [status, reason, run_id])

    def nightly_runs(self, day) -> list[dict]:
        """The nightly runs started on `day`, oldest first, figures parsed."""
        return _figures_parsed(self.sql("SELECT * FROM nightly_runs WHERE day = ? ORDER BY started_at", [day]))

    def withdrawn_clusters(self, student_version: str) -> set[str]:
        rows = self.sql("SELECT cluster_id FROM withdrawn_clusters WHERE student_version = ?", [student_version])
        return {row["cluster_id"] for row in rows}

    def explain(self, needle: str) -> list[dict]:
        """The latest curation decision for a trace id, query id or query text, with its cluster."""
        return self.sql("""
            WITH latest AS (SELECT run_id FROM curation_runs ORDER BY created_at DESC LIMIT 1)
            SELECT t.trace_id, t.asked_at, t.scope, t.query, t.answer, t.refusal_reason, t.answerability,
                   t.answerability_threshold, t.answerability_method, t.origin, c.decision, c.reason, c.cluster_id,
                   k.representative, k.frequency, k.agreement, k.answer AS cluster_answer, c.run_id
            FROM curation c JOIN latest USING (run_id) JOIN traces t USING (trace_id)
            LEFT JOIN clusters k ON k.run_id = c.run_id AND k.cluster_id = c.cluster_id
            WHERE t.trace_id = ? OR t.query_id = ? OR lower(t.query) = lower(?)
            ORDER BY t.asked_at""", [needle, needle, needle.strip()])

    def sql(self, query: str, params: Sequence | None = None) -> list[dict]:
        """Run distill's own SQL and return rows as dicts. A failure here is a bug, so it keeps its
        duckdb error and traceback; a user's SQL goes through `user_sql`, whose errors are theirs."""
        with self._lock:
            return _as_dicts(self._con.cursor().execute(query, params or []))


def _as_dicts(result) -> list[dict]:
    """A query's rows as dicts by column name (none for a statement that returns no rows)."""
    if result.description is None:
        return []
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def user_sql(traces_db: Path, query: str, write: bool = False) -> list[dict]:
    """A user's SQL on the trace store (what `distill sql` runs): the segments services wrote are
    folded in first, so the query sees every answered trace, and then the file is opened read-only
    unless `write`, so a statement that would change it fails instead of deleting traces. An error
    is the user's: one line, the query's fault.

        >>> user_sql(workspace.traces_db, "SELECT route, count(*) AS n FROM traces GROUP BY 1")
        [{'route': 'rag', 'n': 61}, {'route': 'replay', 'n': 21}]
    """
    TraceStore(traces_db).close()
    con = _open(Path(traces_db), read_only=not write, wait_s=WAIT_S)
    try:
        return _as_dicts(con.execute(query))
    except duckdb.Error as err:
        if "read-only" in str(err):
            raise DistillError(f"distill sql is read-only and this statement would change the store "
                               f"({_first_line(err)}); pass --write if you mean it") from None
        raise DistillError(f"SQL failed: {_first_line(err)}") from None
    finally:
        con.close()


# --------------------------------------------------------------------------------------------
# Segments: what a running service writes instead of holding the trace store
# --------------------------------------------------------------------------------------------

SEGMENTS = "segments"
ABANDONED_AFTER_S = 3600  # an open segment of another machine untouched this long belongs to a dead process


def segment_folder(traces_db: Path) -> Path:
    """Where services write their segments: `traces/segments/` beside `traces/traces.duckdb`."""
    return Path(traces_db).parent / SEGMENTS


def has_traces(traces_db: Path) -> bool:
    """Whether there is a trace store to open: the file, or segments a service or a `TraceLogger`
    wrote that the first open will fold into a new one."""
    folder = segment_folder(traces_db)
    return Path(traces_db).exists() or (folder.is_dir() and any(folder.iterdir()))


class SegmentLog:
    """The records a long-running process (a service's router) writes, without opening the store.

    DuckDB lets one process write a file at a time, so a service holding `traces.duckdb` would lock
    `collect`, `curate`, `nightly` and `sql` out. Each process instead appends JSON lines to a file
    of its own, `traces/segments/<host>-<pid>-<ns>.open`, flushed and fsynced before `write`
    returns: a crash loses only records not yet handed to `write`. Every `rotate_s` seconds (or
    `rotate_rows` records) the file is finished (renamed to `.jsonl`) and a new one begun. Whoever
    opens the trace store next folds the finished segments in (`TraceStore.fold_segments`), and
    those a process that died left open; traces are deduplicated by query_id, so nothing is counted
    twice.

        >>> log = SegmentLog(Path("ws/traces/segments"))
        >>> log.write([{"kind": "trace", "row": {...}}])     # durable when this returns
        >>> log.close()                                       # finished: the next command folds it
    """

    def __init__(self, folder: Path, rotate_s: float = 5.0, rotate_rows: int = 10_000):
        self.folder, self.rotate_s, self.rotate_rows = Path(folder), rotate_s, rotate_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file, self._path, self._rows, self._opened = None, None, 0, 0.0

    def write(self, records: Sequence[dict]) -> None:
        """Append records (`{"kind": "trace" | "shadow_check" | "withdrawal", "row": {...}}`) durably."""
        if not records:
            return
        lines = "".join(json.dumps(r, default=_iso) + "\n" for r in records)
        with self._lock:
            if self._file is None:
                self._path = self.folder / f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.open"
                self._file, self._rows, self._opened = self._path.open("a", encoding="utf-8"), 0, time.monotonic()
            self._file.write(lines)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._rows += len(records)
            if self._rows >= self.rotate_rows or time.monotonic() - self._opened >= self.rotate_s:
                self._finish()

    def finish_due(self) -> None:
        """Finish the open segment if it is older than `rotate_s` (the writer calls this when idle)."""
        with self._lock:
            if self._file is not None and time.monotonic() - self._opened >= self.rotate_s:
                self._finish()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._finish()

    def _finish(self) -> None:
        self._file.close()
        os.replace(self._path, self._path.with_suffix(".jsonl"))
        self._file = self._path = None


def _iso(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def finished_segments(folder: Path) -> list[Path]:
    """The segments ready to fold, oldest first: finished ones, and open ones whose process is gone."""
    if not folder.is_dir():
        return []
    ready = [p for p in folder.glob("*.jsonl")] + [p for p in folder.glob("*.open") if _abandoned(p)]
    return sorted(ready, key=lambda p: p.stat().st_mtime)


def _abandoned(path: Path) -> bool:
    host, _, rest = path.stem.rpartition("-")[0].rpartition("-")
    pid = int(rest) if rest.isdigit() else -1
    if host == socket.gethostname() and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - path.stat().st_mtime > ABANDONED_AFTER_S


def find_trace(traces_db: Path, trace_id: str) -> dict | None:
    """One trace by id, wherever it is: the newest segments first (a service's answers of the last
    seconds are only there), then the store, read-only (None when neither has it). A store another
    command is writing is waited for a few seconds, then a DistillError says so."""
    needle = json.dumps({"trace_id": trace_id})[1:-1].encode()  # '"trace_id": "<id>"' as segments write it
    folder = segment_folder(traces_db)
    paths = list(folder.glob("*.open")) + sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime,
                                                 reverse=True) if folder.is_dir() else []
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # folded meanwhile: it is in the store now
            continue
        at = data.find(needle)
        if at >= 0:
            line = data[data.rfind(b"\n", 0, at) + 1:data.find(b"\n", at)]
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                row = json.loads(line)["row"]
                return {name: row.get(name) for name in RATED_TRACE_COLUMNS}
    if not Path(traces_db).exists():
        return None
    con = _open(Path(traces_db), read_only=True, wait_s=5.0)
    try:
        result = con.execute(f"SELECT {', '.join(RATED_TRACE_COLUMNS)} FROM traces WHERE trace_id = ?", [trace_id])
        names, row = [d[0] for d in result.description], result.fetchone()
    finally:
        con.close()
    return dict(zip(names, row)) if row else None


RATED_TRACE_COLUMNS = ["trace_id", "route", "backend", "student_version", "cluster_id", "scope", "query", "answer",
                       "citations", "refused", "answerability", "corpus_generation"]


def read_segment(path: Path) -> list[dict]:
    """A segment's records; a last line cut short by a crash is skipped."""
    records = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


# --------------------------------------------------------------------------------------------
# Feedback journals: ratings, appended by any process, read by every running router
# --------------------------------------------------------------------------------------------

FEEDBACK = "feedback"


def feedback_folder(traces_db: Path) -> Path:
    """Where ratings are journaled: `traces/feedback/` beside `traces/traces.duckdb`."""
    return Path(traces_db).parent / FEEDBACK


def journal_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def read_journal(path: Path, start: int = 0) -> tuple[list[dict], int]:
    """The ratings written to a journal after byte `start`, and the offset after the last whole
    line (a line a crash cut short is read once it is whole, or never)."""
    with path.open("rb") as journal:
        journal.seek(start)
        data = journal.read()
    end = data.rfind(b"\n") + 1
    ratings = []
    for line in data[:end].splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            ratings.append(json.loads(line))
    return ratings, start + end


class FeedbackJournal:
    """Ratings as JSON lines, one append-only file per process (`traces/feedback/<host>-<pid>-<ns>.jsonl`),
    fsynced before `append` returns. Unlike trace segments the files stay after they are folded
    into the store (`TraceStore.fold_feedback` remembers how far): every running router reads every
    journal's new lines (`read_new`) each `router.reload_s`, so a rating given to one worker takes
    effect in all of them without any of them opening the store.

        >>> journal = FeedbackJournal(feedback_folder(workspace.traces_db))
        >>> journal.append([rating])        # durable when this returns
        >>> journal.read_new()              # every process's ratings this reader has not seen yet
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._offsets: dict[Path, int] = {}

    def append(self, ratings: Sequence[dict]) -> tuple[Path | None, int]:
        """Write ratings durably; returns this process's journal and its size after them."""
        if not ratings:
            return self._path, 0
        lines = "".join(json.dumps(r, default=_iso) + "\n" for r in ratings).encode()
        with self._lock:
            if self._path is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._path = self.folder / f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.jsonl"
            with self._path.open("ab") as journal:
                journal.write(lines)
                journal.flush()
                os.fsync(journal.fileno())
                return self._path, journal.tell()

    def read_new(self) -> list[dict]:
        """The ratings every journal gained since this reader last looked (all of them the first time)."""
        found = []
        with self._lock:
            for path in journal_files(self.folder):
                ratings, self._offsets[path] = read_journal(path, self._offsets.get(path, 0))
                found.extend(ratings)
        return found


# --------------------------------------------------------------------------------------------
# Corpus tables (chunks, document versions, BM25)
# --------------------------------------------------------------------------------------------

def _c001_corpus(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE documents (
            doc_id VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            scope VARCHAR,
            source VARCHAR NOT NULL,
            title VARCHAR,
            effective_date VARCHAR,
            content_hash VARCHAR NOT NULL,
            ingested_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (doc_id, version)
        )""")
    con.execute("""
        CREATE TABLE chunks (
            chunk_key BIGINT PRIMARY KEY,
            chunk_id VARCHAR NOT NULL UNIQUE,
            doc_id VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            scope VARCHAR,
            source VARCHAR NOT NULL,
            heading VARCHAR,
            text VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            content_hash VARCHAR NOT NULL,
            injection_flag VARCHAR,
            is_latest BOOLEAN NOT NULL
        )""")


CORPUS_MIGRATIONS: list[Migration] = [_c001_corpus]

_CHUNK_COLUMNS = ["chunk_key", "chunk_id", "doc_id", "version", "scope", "source", "heading", "text",
                  "position", "content_hash", "injection_flag", "is_latest"]


class CorpusStore:
    """Documents and chunks with their versions, and the BM25 index over the chunks."""

    def __init__(self, path: Path, read_only: bool = False, wait_s: float | None = None):
        self.path = Path(path)
        self._con = _open(self.path, read_only=read_only, wait_s=WAIT_S if wait_s is None else wait_s)
        self._lock = threading.Lock()
        if not read_only:
            _migrate(self._con, self.path, CORPUS_MIGRATIONS)
        self._con.execute(f"LOAD '{_extension_path('fts')}'")

    def close(self) -> None:
        self._con.close()

    def document_versions(self) -> dict[str, int]:
        """doc_id -> latest ingested version."""
        rows = self._con.execute("SELECT doc_id, max(version) FROM documents GROUP BY doc_id").fetchall()
        return dict(rows)

    def scopes(self) -> set[str]:
        """The scopes of the ingested chunks."""
        return {r[0] for r in self._con.execute("SELECT DISTINCT scope FROM chunks WHERE scope IS NOT NULL").fetchall()}

    def document_hashes(self) -> dict[tuple[str, int], str]:
        """(doc_id, version) -> content hash of every stored document version."""
        rows = self._con.execute("SELECT doc_id, version, content_hash FROM documents").fetchall()
        return {(doc_id, version): content_hash for doc_id, version, content_hash in rows}

    def next_chunk_key(self) -> int:
        return self._con.execute("SELECT coalesce(max(chunk_key) + 1, 0) FROM chunks").fetchone()[0]

    def add(self, documents: Sequence[dict], chunks: Sequence[dict]) -> None:
        """Store new document versions and their chunks, refresh `is_latest` and the BM25 index."""
        import pyarrow as pa

        docs = pa.Table.from_pylist([{**d, "ingested_at": datetime.now(timezone.utc)} for d in documents])  # noqa: F841
        rows = pa.Table.from_pylist(list(chunks)).select(_CHUNK_COLUMNS) if chunks else None  # noqa: F841
        con = self._con
        with _transaction(con):
            if documents:
                con.execute("INSERT INTO documents BY NAME SELECT * FROM docs")
            if chunks:
                con.execute(f"INSERT INTO chunks ({', '.join(_CHUNK_COLUMNS)}) SELECT * FROM rows")
            con.execute("""
                UPDATE chunks SET is_latest = (chunks.version = latest.version)
                FROM (SELECT doc_id, max(version) AS version FROM documents GROUP BY doc_id) AS latest
                WHERE chunks.doc_id = latest.doc_id""")
        con.execute("PRAGMA create_fts_index('chunks', 'chunk_key', 'heading', 'text', overwrite=1)")
        con.execute("CHECKPOINT")

    def chunks(self, keys: Sequence[int] | None = None) -> list[dict]:
        """Chunk rows by key (all chunks when `keys` is None), ordered by key."""
        cur = self._con.cursor()
        if keys is None:
            result = cur.execute("SELECT * FROM chunks ORDER BY chunk_key")
        else:
            result = cur.execute("SELECT * FROM chunks WHERE chunk_key IN (SELECT unnest(?)) ORDER BY chunk_key",
                                 [list(keys)])
        names = [d[0] for d in result.description]
        return [dict(zip(names, row)) for row in result.fetchall()]

    def fts_index(self) -> dict:
        """What DuckDB's fts extension built for BM25: postings (term id, chunk key, term frequency
        over heading and text), each term's id and document frequency, chunk lengths, corpus size
        and average length. `index.Bm25` scores queries from these in memory."""
        con = self._con.cursor()
        postings = con.execute("""
            SELECT t.termid, d.name AS chunk_key, count(*) AS tf
            FROM fts_main_chunks.terms AS t JOIN fts_main_chunks.docs AS d USING (docid)
            GROUP BY ALL""").fetchnumpy()
        lengths = con.execute("SELECT name AS chunk_key, len FROM fts_main_chunks.docs").fetchnumpy()
        terms = con.execute("SELECT term, termid, df FROM fts_main_chunks.dict").fetchall()
        num_docs, avgdl = con.execute("SELECT num_docs, avgdl FROM fts_main_chunks.stats").fetchone()
        return {"postings": postings, "lengths": lengths, "terms": terms, "num_docs": num_docs, "avgdl": avgdl}

    def chunk_texts(self, chunk_ids: Iterable[str]) -> dict[str, str]:
        rows = self._con.cursor().execute("SELECT chunk_id, text FROM chunks WHERE chunk_id IN (SELECT unnest(?))",
                                          [list(chunk_ids)]).fetchall()
        return dict(rows)

    def chunks_by_id(self, chunk_ids: Iterable[str]) -> dict[str, dict]:
        """chunk_id -> its row, at whatever version the id names (old versions included)."""
        result = self._con.cursor().execute("SELECT * FROM chunks WHERE chunk_id IN (SELECT unnest(?))", [list(chunk_ids)])
        names = [d[0] for d in result.description]
        return {row[names.index("chunk_id")]: dict(zip(names, row)) for row in result.fetchall()}

    def flagged_chunk_ids(self) -> set[str]:
        return {r[0] for r in self._con.execute("SELECT chunk_id FROM chunks WHERE injection_flag IS NOT NULL").fetchall()}

    def tokenizer(self) -> str:
        """The SQL of the fts index's tokenize macro (to tokenize queries the same way elsewhere)."""
        row = self._con.execute("SELECT macro_definition FROM duckdb_functions() WHERE schema_name = 'fts_main_chunks' "
                                "AND function_name = 'tokenize'").fetchone()
        if row is None:
            raise DistillError(f"{self.path} has no full-text index; rerun `distill ingest`")
        return row[0]


class CorpusSnapshot:
    """What retrieval reads from the corpus, copied into memory; the file is closed again at once.

    A service answers from its snapshot while `ingest` writes the next version of the file (DuckDB
    lets no process write a file another has open), and the router swaps to a new snapshot when
    one is complete (router.py). Queries are tokenized and stemmed by DuckDB in memory with the
    file's own tokenize macro, so BM25 matches the index exactly.

        >>> snapshot = CorpusSnapshot(Path("ws/index/corpus.duckdb"))
        >>> snapshot.query_terms("How do I export?")
        ['export', 'how', 'do', 'i']
    """

    def __init__(self, path: Path):
        store = CorpusStore(path, read_only=True)
        try:
            self.versions = store.document_versions()
            self.all_chunks = store.chunks()
            self.fts = store.fts_index()
            tokenize = store.tokenizer()
        finally:
            store.close()
        self.path = Path(path)
        self._texts = {c["chunk_id"]: c["text"] for c in self.all_chunks}
        self._con = duckdb.connect()
        self._con.execute(f"LOAD '{_extension_path('fts')}'")
        self._con.execute("CREATE SCHEMA fts_main_chunks")
        self._con.execute(f"CREATE MACRO fts_main_chunks.tokenize(s) AS {tokenize}")
        self._vocabulary: frozenset[str] | None = None
        self._vocabulary_lock = threading.Lock()

    def document_versions(self) -> dict[str, int]:
        return dict(self.versions)

    def vocabulary(self) -> frozenset[str]:
        """Every word of the corpus's headings and text, stemmed as queries are, stop words
        included (the BM25 index leaves them out: 'plus' among them, as in 'the Plus plan'); built
        once, on first use."""
        with self._vocabulary_lock:
            if self._vocabulary is None:
                import pyarrow as pa

                texts = pa.table({"text": [f"{c.get('heading') or ''} {c['text']}" for c in self.all_chunks]})
                cur = self._con.cursor()
                cur.register("corpus_texts", texts)
                rows = cur.execute("SELECT DISTINCT stem(unnest(fts_main_chunks.tokenize(text)), 'porter') "
                                   "FROM corpus_texts").fetchall()
                self._vocabulary = frozenset(r[0] for r in rows if r[0])
            return self._vocabulary

    def chunks(self) -> list[dict]:
        return self.all_chunks

    def fts_index(self) -> dict:
        return self.fts

    def chunk_texts(self, chunk_ids: Iterable[str]) -> dict[str, str]:
        return {c: self._texts[c] for c in chunk_ids if c in self._texts}

    def query_terms(self, query: str) -> list[str]:
        """`query` tokenized and stemmed exactly as the fts index tokenized the chunks."""
        rows = self._con.cursor().execute(
            "SELECT DISTINCT stem(unnest(fts_main_chunks.tokenize(?)), 'porter')", [query]).fetchall()
        return [r[0] for r in rows if r[0]]


def take_batch(source: queue.Queue, first, limit: int, wait_s: float) -> tuple[list, bool]:
    """`first` and whatever else arrives on `source` within `wait_s`, up to `limit` items; and
    whether the stop marker (None) arrived meanwhile (it is not in the batch)."""
    batch, deadline = [first], time.monotonic() + wait_s
    while len(batch) < limit and (left := deadline - time.monotonic()) > 0:
        try:
            item = source.get(timeout=left)
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


class TraceWriter:
    """What a router logs (traces, shadow checks, withdrawn intents), written from a background
    thread in batches to this process's own segment of the trace store (`store.SegmentLog`), so a
    running service never locks `traces.duckdb` against collect, curate, nightly or sql; the next
    of those to open the store folds the segments in. `close` writes everything queued and finishes
    the segment.

        >>> writer = TraceWriter(workspace.traces_db)
        >>> writer.put("trace", trace)          # returns at once; durable within `wait_s`
        >>> writer.close()
    """

    def __init__(self, traces_db: Path, batch: int = 256, wait_s: float = 0.2, rotate_s: float = 5.0):
        self.traces_db, self.batch, self.wait_s = Path(traces_db), batch, wait_s
        self.log = SegmentLog(segment_folder(self.traces_db), rotate_s=rotate_s)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="distill-trace-writer", daemon=True)
        self._thread.start()

    def put(self, kind: str, row) -> None:
        """Queue a record: `kind` "trace" (a Trace), "shadow_check" or "withdrawal" (dicts)."""
        self._queue.put({"kind": kind, "row": dict(row.__dict__) if isinstance(row, Trace) else row})

    def withdrawn_clusters(self, version: str) -> set[str]:
        """The intents of `version` withdrawn so far, from the store (folding the segments in)."""
        with TraceStore(self.traces_db) as store:
            return store.withdrawn_clusters(version)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.log.rotate_s)
            except queue.Empty:  # idle: finish the open segment so the next command folds it
                self.log.finish_due()
                continue
            if first is None:
                break
            records, stopping = take_batch(self._queue, first, self.batch, self.wait_s)
            try:
                self.log.write(records)
            except OSError:  # a full disk must not take the service down; the records are lost, said once
                logger.exception("could not write %d trace records to %s", len(records), self.log.folder)
            if stopping:
                break
        self.log.close()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
