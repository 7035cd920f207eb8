"""Batch collection: run a query log through the teacher and log every answer as a trace.

The input is JSONL, one `{"query", "scope"?, "query_id"?, "timestamp"?}` per line. Each query gets
an idempotency key (its `query_id`, or a hash of scope, text, timestamp and occurrence), so a rerun
of the same command skips what is already stored and never duplicates:

    report = collect(workspace, config, Path("queries.jsonl"))
    report.answered, report.skipped_existing  # (80, 0)
    collect(workspace, config, Path("queries.jsonl")).skipped_existing  # 80

Queries are answered and committed in batches of `collect.commit_every`: a crash or `kill -9` loses
at most the batches in flight. A bad line (not JSON, no `query`, an unknown scope, a bad timestamp) is
reported with its line number and skipped, or stops the run with `strict=True`; a file with no
usable line at all is an error.

Two engines answer the batches (`collect.engine`): `local`, this process; and `ray`, a Ray Data
pipeline whose `collect.ray_workers` actors each load a teacher (on a cluster: one per machine or
GPU) and answer batches in parallel. Either way this process alone writes the trace store, batch
by batch as answers stream back, so the resume guarantee is the same. With the `openai` teacher
backend each worker keeps `teacher.openai.max_concurrency` requests in flight to the endpoint.

    collect(workspace, config, Path("queries.jsonl"), engine="ray").answered   # ray.init() here,
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from distill.config import CHOICES, Config
from distill.errors import DistillError
from distill.rag import answerability
from distill.rag.answers import Answer
from distill.rag.index import corpus_path
from distill.rag.teacher import Teacher, ensure_answerability_fitted
from distill.store.chunks import CorpusStore
from distill.store.feedback import Verdicts
from distill.store.schema import Trace
from distill.store.traces import TraceStore
from distill.timestamps import utc
from distill.workspace import Workspace


@dataclass
class QueryRecord:
    query: str
    scope: str | None
    query_id: str
    asked_at: datetime
    line: int


@dataclass
class CollectReport:
    run_id: str
    queries_read: int = 0
    answered: int = 0
    refused: int = 0
    skipped_existing: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    calibration: answerability.Calibration | None = None  # fitted by this run (a new or changed corpus)


def require_query_file(path: Path) -> None:
    if not Path(path).is_file():
        raise DistillError(f"query file {path} does not exist; pass a JSONL file of {{\"query\": ...}} lines")


def read_queries(path: Path, known_scopes: set[str] | None = None, strict: bool = False,
                 limit: int | None = None) -> tuple[list[QueryRecord], list[tuple[int, str]]]:
    """Parse a query log. Returns the good records and (line number, problem) for each bad line."""
    require_query_file(path)
    records, bad, seen = [], [], {}
    now = datetime.now(timezone.utc)
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if limit is not None and len(records) >= limit:
                break
            if not line.strip():
                continue
            problem = None
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row, problem = None, "not valid JSON"
            if problem is None and (not isinstance(row, dict) or not str(row.get("query") or "").strip()):
                problem = "no 'query' field"
            scope = row.get("scope") if problem is None else None
            if problem is None and scope is not None and known_scopes is not None and scope not in known_scopes:
                problem = f"unknown scope '{scope}'"
            asked_at = now
            if problem is None and row.get("timestamp") is not None:
                try:
                    asked_at = utc(row["timestamp"])
                except ValueError:
                    problem = f"timestamp {row['timestamp']!r} is not ISO 8601"
            if problem:
                if strict:
                    raise DistillError(f"{path}:{number}: {problem}; fix the line or drop --strict to skip it")
                bad.append((number, problem))
                continue
            query = str(row["query"]).strip()
            query_id = row.get("query_id")
            if query_id is None:
                basis = f"{scope}\x1f{query}\x1f{row.get('timestamp')}"
                seen[basis] = seen.get(basis, 0) + 1
                query_id = hashlib.sha256(f"{basis}\x1f{seen[basis]}".encode()).hexdigest()[:32]
            records.append(QueryRecord(query, scope, str(query_id), asked_at, number))
    return records, bad


def to_trace(answer: Answer, record: QueryRecord, run_id: str | None, route: str = "rag",
             route_reason: str = "collect") -> Trace:
    return Trace(**answer.trace_fields(), trace_id=uuid.uuid4().hex, query_id=record.query_id, collect_run_id=run_id,
                 asked_at=record.asked_at, route=route, route_reason=route_reason, latency_ms=answer.latency_ms,
                 origin="collect")


ENGINES = CHOICES["collect.engine"]


def collect(workspace: Workspace, config: Config, path: Path, limit: int | None = None, strict: bool = False,
            teacher: Teacher | None = None, on_progress: Callable[[int, int], None] | None = None,
            engine: str | None = None) -> CollectReport:
    """Answer every not-yet-answered query in `path` with the teacher and append the traces."""
    engine = engine or config.collect.engine
    if engine not in ENGINES:
        raise DistillError(f"unknown collection engine '{engine}'; set collect.engine (or --engine) to local or ray")
    if engine == "ray" and config.collect.ray_workers < 1:
        raise DistillError(f"setting 'collect.ray_workers' must be at least 1 (got {config.collect.ray_workers})")
    require_query_file(path)
    if engine == "local":
        teacher = teacher or Teacher.from_workspace(workspace, config)
        scopes = teacher.retriever.scopes
    else:
        corpus = CorpusStore(corpus_path(workspace), read_only=True)
        try:
            scopes = corpus.scopes()
        finally:
            corpus.close()
    records, bad = read_queries(path, scopes or None, strict, limit)
    if bad and not records:
        number, problem = bad[0]
        raise DistillError(f"no line of {path} is a usable query ({len(bad)} bad, the first {path}:{number}: {problem}); "
                           f"each line needs a JSON object with a 'query'")
    report = CollectReport(run_id=uuid.uuid4().hex, queries_read=len(records), bad_lines=bad)
    with TraceStore(workspace.traces_db) as store:
        done = store.answered(r.query_id for r in records)
        ratings = store.feedback()
        store.start_run(report.run_id, str(path), config.teacher.backend if teacher is None else teacher.generator.backend)
    unique = {r.query_id: r for r in records if r.query_id not in done}
    todo = list(unique.values())
    report.skipped_existing = len(records) - len(todo)
    # A new workspace, or a corpus changed since the threshold was fitted: fit it before answering.
    report.calibration = ensure_answerability_fitted(workspace, config, teacher)
    if report.calibration and teacher is not None:
        teacher.threshold, teacher.method = report.calibration.threshold, report.calibration.method
    if ratings and teacher is not None:  # users' verdicts on the chunks it answered from (feedback.py)
        teacher.use_feedback(Verdicts(config.feedback, ratings), config.feedback)
    if on_progress:
        on_progress(0, len(todo))
    batches = (_local_batches(teacher, todo, config.collect.commit_every, report.run_id) if engine == "local"
               else _ray_batches(workspace, config, todo, report.run_id))
    for traces in batches:
        # Opened per batch, not for the whole run: `sql`, `curate` and starting services get in between.
        with TraceStore(workspace.traces_db) as store:
            report.answered += store.append(traces)
        report.refused += sum(t.refused for t in traces)
        if on_progress:
            on_progress(len(traces), len(todo))
    with TraceStore(workspace.traces_db) as store:
        store.finish_run(report.run_id, report.queries_read, report.answered, report.skipped_existing, len(bad))
    return report


def _answered(teacher: Teacher, records: list[QueryRecord], run_id: str) -> list[Trace]:
    answers = teacher.answer_batch([(r.query, r.scope) for r in records])
    return [to_trace(a, r, run_id) for a, r in zip(answers, records)]


def _local_batches(teacher: Teacher, todo: list[QueryRecord], size: int, run_id: str) -> Iterator[list[Trace]]:
    for start in range(0, len(todo), size):
        yield _answered(teacher, todo[start:start + size], run_id)


class RayTeacher:
    """One Ray actor: a teacher loaded once, answering batches of query records as traces (JSON).

    It opens the workspace at the collecting machine's path: on a cluster, the workspace folder
    (its index/) must be mounted at the same path on every node (NFS, EFS, a baked image)."""

    def __init__(self, home: str, config: Config, run_id: str):
        self.teacher = Teacher.from_workspace(Workspace(Path(home)), config)
        self.run_id = run_id

    def __call__(self, batch: dict) -> dict:
        records = [QueryRecord(q, s, i, datetime.fromisoformat(t), int(n)) for q, s, i, t, n in
                   zip(batch["query"], batch["scope"], batch["query_id"], batch["asked_at"], batch["line"])]
        return {"trace": [_trace_json(trace) for trace in _answered(self.teacher, records, self.run_id)]}


def _ray_batches(workspace: Workspace, config: Config, todo: list[QueryRecord], run_id: str) -> Iterator[list[Trace]]:
    """Fan `todo` out to Ray Data actors; yield each answered batch as it comes back."""
    if not todo:
        return
    import ray

    cfg = config.collect
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=cfg.ray_address or None, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise DistillError(f"cannot start or reach Ray at '{cfg.ray_address or 'this machine'}' "
                               f"({str(err).splitlines()[0]}); check collect.ray_address") from None
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # progress is the caller's (one bar for the whole run)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        items = [{"query": r.query, "scope": r.scope, "query_id": r.query_id, "asked_at": r.asked_at.isoformat(),
                  "line": r.line} for r in todo]
        blocks = max(cfg.ray_workers, math.ceil(len(todo) / cfg.commit_every))  # enough to keep every actor busy
        answered = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            RayTeacher, fn_constructor_kwargs={"home": str(workspace.home), "config": config, "run_id": run_id},
            batch_size=cfg.commit_every, compute=ray.data.ActorPoolStrategy(size=cfg.ray_workers),
            num_cpus=cfg.ray_cpus_per_worker, batch_format="numpy")
        for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
            yield [_trace_from_json(line) for line in batch["trace"]]
    finally:
        if started_here:
            ray.shutdown()


def _trace_json(trace: Trace) -> str:
    return json.dumps(trace.__dict__, default=lambda value: value.isoformat())


def _trace_from_json(line: str) -> Trace:
    row = json.loads(line)
    for key in ("asked_at", "created_at"):
        row[key] = datetime.fromisoformat(row[key])
    return Trace(**row)
