"""The trace store, `traces/traces.duckdb`: appending traces (one transaction per batch, deduplicated
by query id), the queries curation, the nightly, the evaluation and `explain` run, and a user's
own SQL (`user_sql`, read-only unless asked). A running router writes through writer.py instead.

    store = TraceStore(Path("traces/traces.duckdb"))    # creates or upgrades the file
    store.append([trace])                               # one transaction per batch
    store.append([trace])                               # same query_id: skipped, not duplicated

A batch is one transaction, so a crash or `kill -9` loses at most the batch being written, and
`query_id` is unique, so re-running a collection resumes instead of duplicating.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterable, Sequence

import duckdb

from distill.errors import DistillError
from distill.store.db import WAIT_S, Migration, as_dicts, connect, first_line, migrate, transaction
from distill.store.lake import LAKE_SELECT, attach_lake
from distill.store.schema import (
    CURATION_INPUT,
    FEEDBACK_COLUMNS,
    RATED_TRACE_COLUMNS,
    RENAMED_FIELDS,
    TRACE_COLUMNS,
    TRACE_MIGRATIONS,
    Trace,
    trace_from_row,
    trace_table,
)
from distill.store.segments import (
    feedback_folder,
    finished_segments,
    journal_files,
    read_journal,
    read_segment,
    segment_folder,
)
from distill.workspace import LakeLocation


def _insert_table(cur: duckdb.DuckDBPyConnection, batch) -> int:
    """Insert the rows of a `trace_table` whose query_id is not stored yet (inside the caller's
    transaction); returns how many. An anti-join rather than ON CONFLICT DO NOTHING: the same
    result, four times faster."""
    return cur.execute(f"INSERT INTO traces ({', '.join(TRACE_COLUMNS)}) "
                       f"SELECT * FROM batch ANTI JOIN traces USING (query_id)").fetchone()[0]


def _insert_traces(cur: duckdb.DuckDBPyConnection, traces: Sequence[Trace]) -> int:
    return _insert_table(cur, trace_table(traces)) if traces else 0


def _insert_shadow_check(cur: duckdb.DuckDBPyConnection, row: dict) -> None:
    """One shadow check, unless that trace was already checked against that student version."""
    cur.execute("INSERT INTO shadow_checks BY NAME SELECT * FROM (SELECT ? AS trace_id, "
                "coalesce(CAST(? AS TIMESTAMPTZ), now()) AS checked_at, ? AS student_version, ? AS intent_id, "
                "? AS scope, ? AS query, ? AS student_answer, ? AS teacher_answer, ? AS agreement, ? AS route) AS new "
                "WHERE NOT EXISTS (SELECT 1 FROM shadow_checks s WHERE s.trace_id = new.trace_id "
                "AND s.student_version = new.student_version)",
                [row["trace_id"], row.get("checked_at"), row["student_version"], row["intent_id"], row["scope"],
                 row["query"], row["student_answer"], row["teacher_answer"], row["agreement"], row.get("route")])


def _insert_withdrawal(cur: duckdb.DuckDBPyConnection, student_version: str, intent_id: str, samples: int,
                       agreement: float, evidence: list[dict], withdrawn_at: str | None = None) -> None:
    cur.execute("INSERT INTO withdrawn_intents VALUES (?, ?, coalesce(CAST(? AS TIMESTAMPTZ), now()), ?, ?, ?) "
                "ON CONFLICT DO NOTHING", [student_version, intent_id, withdrawn_at, samples, agreement,
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


# The curation run a query names (`run` with its cutoff): the one given as the first parameter, or
# the latest when that is NULL.
_CURATION_RUN = """
    WITH run AS (SELECT run_id, cutoff FROM curation_runs WHERE run_id = coalesce(?, (
        SELECT run_id FROM curation_runs ORDER BY created_at DESC LIMIT 1)))"""


def _figures_parsed(rows: list[dict]) -> list[dict]:
    return [{**row, "figures": json.loads(row["figures"])} for row in rows]


class TraceStore:
    """The DuckDB trace store. Thread-safe appends; one process may write a file at a time."""

    def __init__(self, path: Path, migrations: Sequence[Migration] = TRACE_MIGRATIONS, wait_s: float | None = None):
        """Opening folds in the segments services wrote beside the file (see `SegmentLog`). A file
        another command is writing is waited for, `wait_s` seconds at most (default `WAIT_S`)."""
        self.path = Path(path)
        self._con = connect(self.path, wait_s=WAIT_S if wait_s is None else wait_s)
        self._lock = threading.Lock()
        try:
            migrate(self._con, self.path, migrations)
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
            with transaction(cur):
                return _insert_traces(cur, traces)

    def append_table(self, table) -> int:
        """`append` for traces already in a `trace_table` (built, say, in another process)."""
        if table.num_rows == 0:
            return 0
        with self._lock:
            cur = self._con.cursor()
            with transaction(cur):
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
                with transaction(cur):
                    added += _insert_traces(cur, [trace_from_row(r["row"]) for r in records if r["kind"] == "trace"])
                    for record in records:
                        if record["kind"] == "shadow_check":
                            _insert_shadow_check(cur, record["row"])
                        elif record["kind"] == "withdrawal":
                            row = record["row"]
                            _insert_withdrawal(cur, row["student_version"], row["intent_id"], row["samples"],
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
                with transaction(cur):
                    added += _insert_feedback(cur, ratings)
                    cur.execute("INSERT OR REPLACE INTO feedback_journals VALUES (?, ?)", [name, end])
        return added

    def add_journaled_feedback(self, ratings: Sequence[dict], journal: Path, end: int) -> int:
        """Store ratings this process has just journaled (`FeedbackJournal.append`), and mark the
        journal folded up to `end`, in one transaction: what `fold_feedback` would do, without
        reading the lines back. Returns the ratings added."""
        with self._lock:
            cur = self._con.cursor()
            with transaction(cur):
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
            attach_lake(cur, lake)
            try:
                lake_columns = {r[0] for r in cur.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_catalog = 'lake' "
                    "AND table_name = 'traces'").fetchall()}
                if not lake_columns:
                    cur.execute(f"CREATE TABLE lake.traces AS SELECT {LAKE_SELECT} FROM traces LIMIT 0")
                    cur.execute("ALTER TABLE lake.traces SET PARTITIONED BY (day, scope)")
                else:
                    for old, new in RENAMED_FIELDS.items():  # a lake pushed to before a rename
                        if old in lake_columns and new not in lake_columns:
                            cur.execute(f"ALTER TABLE lake.traces RENAME COLUMN {old} TO {new}")
                            lake_columns = lake_columns - {old} | {new}
                    types = dict(cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                                             "WHERE table_catalog = current_database() AND table_name = 'traces'").fetchall())
                    for column in TRACE_COLUMNS:
                        if column not in lake_columns:
                            cur.execute(f"ALTER TABLE lake.traces ADD COLUMN {column} {types[column]}")
                with transaction(cur):
                    sent = cur.execute(f"INSERT INTO lake.traces BY NAME SELECT {LAKE_SELECT} FROM traces "
                                       f"WHERE trace_id NOT IN (SELECT trace_id FROM lake.traces)").fetchone()[0]
                return sent
            finally:
                cur.execute("DETACH lake")

    def pull_from_lake(self, lake: "LakeLocation") -> int:
        """Copy into this store the lake's traces it lacks (by query_id), so that the audit joins
        (`explain`, the eval window) find every trace a lake curation decided on. Returns rows copied."""
        with self._lock:
            cur = self._con.cursor()
            attach_lake(cur, lake)
            try:
                with transaction(cur):
                    copied = cur.execute(
                        f"INSERT INTO traces ({', '.join(TRACE_COLUMNS)}) SELECT {', '.join(TRACE_COLUMNS)} "
                        f"FROM lake.traces ANTI JOIN traces USING (query_id)").fetchone()[0]
                return copied
            finally:
                cur.execute("DETACH lake")

    def write_curation(self, run: dict, intents: list[dict], decisions: list[dict]) -> None:
        """Store one curation run, its intents and one decision per trace, all in one transaction."""
        import pyarrow as pa

        intent_rows = pa.Table.from_pylist([{**c, "run_id": run["run_id"]} for c in intents])  # noqa: F841
        decision_rows = pa.Table.from_pylist([{**d, "run_id": run["run_id"]} for d in decisions])  # noqa: F841
        with self._lock:
            cur = self._con.cursor()
            with transaction(cur):
                for table in ("curation", "intents", "curation_runs"):
                    cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run["run_id"]])
                columns = list(run)
                cur.execute(f"INSERT INTO curation_runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                            [run[c] for c in columns])
                if intents:
                    cur.execute("INSERT INTO intents BY NAME SELECT * FROM intent_rows")
                if decisions:
                    cur.execute("INSERT INTO curation BY NAME SELECT * FROM decision_rows")

    def held_out(self, run_id: str | None = None) -> list[dict]:
        """Every teacher trace at or after a curation run's cutoff (default: the latest run), most
        recent first: the traffic a student trained from that run has never seen, high-risk and
        unanswerable questions included, with the intent each fell in and that intent's answer."""
        return self.sql(_CURATION_RUN + """
            SELECT t.trace_id, t.query_id, t.asked_at, t.scope, t.query, t.answer, t.refused, t.citations,
                   t.latency_ms, t.prompt_tokens, t.completion_tokens,
                   c.intent_id, c.decision, c.reason, k.answer AS intent_answer, run.run_id
            FROM run JOIN curation c USING (run_id) JOIN traces t USING (trace_id)
            LEFT JOIN intents k ON k.run_id = c.run_id AND k.intent_id = c.intent_id
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

    def intent_answers(self, run_id: str) -> dict[str, str | None]:
        """intent_id -> the answer its traces agreed on (None: a refusal), for one curation run."""
        rows = self.sql("SELECT intent_id, answer FROM intents WHERE run_id = ?", [run_id])
        return {row["intent_id"]: row["answer"] for row in rows}

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

    def withdrawn_intents(self, student_version: str) -> set[str]:
        rows = self.sql("SELECT intent_id FROM withdrawn_intents WHERE student_version = ?", [student_version])
        return {row["intent_id"] for row in rows}

    def explain(self, needle: str) -> list[dict]:
        """The latest curation decision for a trace id, query id or query text, with its intent."""
        return self.sql("""
            WITH latest AS (SELECT run_id FROM curation_runs ORDER BY created_at DESC LIMIT 1)
            SELECT t.trace_id, t.asked_at, t.scope, t.query, t.answer, t.refusal_reason, t.answerability,
                   t.answerability_threshold, t.answerability_method, t.origin, c.decision, c.reason, c.intent_id,
                   k.representative, k.frequency, k.agreement, k.answer AS intent_answer, c.run_id
            FROM curation c JOIN latest USING (run_id) JOIN traces t USING (trace_id)
            LEFT JOIN intents k ON k.run_id = c.run_id AND k.intent_id = c.intent_id
            WHERE t.trace_id = ? OR t.query_id = ? OR lower(t.query) = lower(?)
            ORDER BY t.asked_at""", [needle, needle, needle.strip()])

    def sql(self, query: str, params: Sequence | None = None) -> list[dict]:
        """Run distill's own SQL and return rows as dicts. A failure here is a bug, so it keeps its
        duckdb error and traceback; a user's SQL goes through `user_sql`, whose errors are theirs."""
        with self._lock:
            return as_dicts(self._con.cursor().execute(query, params or []))


def user_sql(traces_db: Path, query: str, write: bool = False) -> list[dict]:
    """A user's SQL on the trace store (what `distill sql` runs): the segments services wrote are
    folded in first, so the query sees every answered trace, and then the file is opened read-only
    unless `write`, so a statement that would change it fails instead of deleting traces. An error
    is the user's: one line, the query's fault.

        user_sql(workspace.traces_db, "SELECT route, count(*) AS n FROM traces GROUP BY 1")
    """
    TraceStore(traces_db).close()
    con = connect(Path(traces_db), read_only=not write, wait_s=WAIT_S)
    try:
        return as_dicts(con.execute(query))
    except duckdb.Error as err:
        if "read-only" in str(err):
            raise DistillError(f"distill sql is read-only and this statement would change the store "
                               f"({first_line(err)}); pass --write if you mean it") from None
        raise DistillError(f"SQL failed: {first_line(err)}") from None
    finally:
        con.close()
