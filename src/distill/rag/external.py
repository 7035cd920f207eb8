"""Traces from a RAG system distill does not run: import them, or log them from the service itself.

Teams already run RAG (LangChain, LlamaIndex, Haystack, their own code). distill learns from that
system's answers the way it learns from its own teacher's, once each answer is a trace. Three ways
in, one record form:

    {"id": "r-1", "query": "How long is the refund window?", "scope": "billing",
     "timestamp": "2026-11-20T09:14:03Z", "answer": "Refunds are available within 30 days.",
     "contexts": [{"id": "kb/refunds#2", "text": "Refunds are available within 30 days of purchase.",
                   "version": 3, "source": "help-center", "doc_id": "kb/refunds"}],
     "citations": ["kb/refunds#2"], "model": "gpt-4o-mini", "prompt_tokens": 412,
     "completion_tokens": 9, "latency_ms": 840, "refused": false}

- `distill import FILE`: JSON lines of such records (`import_file`), or OpenTelemetry GenAI spans
  exported as OTLP JSON (`otlp_records`). It is idempotent by `id`, and a bad record is reported
  by its line and skipped.
- `TraceLogger`: two lines in a service's RAG handler. It writes from a background thread to the
  workspace's segments, as a running router does.
- `teacher.backend = "http"`: the router falls back to the team's RAG endpoint, and those answers
  are traces too (teacher.py).

What the source lacks is computed on the way in (`to_trace`):
- citations, by word overlap with the contexts, when none are given;
- the groundedness of the answer in the cited contexts;
- a version from the content hash, for a context without one.

Curation treats a context as a versioned document (`teacher.context_chunks`): its `doc_id` at
its `version`, or, without a version, itself at its content hash. In the trace a context is the
chunk `<doc_id>@v<version>#<position among the contexts>`. A context whose text changes between
traces gets a new hash version, and the intents that cited the old text go stale, as after a new
document version is ingested.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from distill.errors import DistillError
from distill.rag.answers import groundedness
from distill.rag.conversation import standalone_turn
from distill.rag.http_teacher import cited_contexts, context_chunks
from distill.store.feedback import Rating, RecentTraces
from distill.store.schema import Trace, trace_table
from distill.store.segments import FeedbackJournal, feedback_folder
from distill.store.traces import TraceStore
from distill.store.writer import TraceWriter
from distill.timestamps import utc
from distill.workspace import Workspace

BATCH = 10_000  # records parsed and committed together: memory stays flat in the file's size


def to_trace(record: dict, route_reason: str = "import") -> Trace:
    """One record of the documented form as a trace; ValueError says what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    query, answer = record.get("query"), record.get("answer", "")
    if not isinstance(query, str) or not query.strip():
        raise ValueError("no 'query' (a non-empty string)")
    if not isinstance(answer, str):
        raise ValueError("'answer' is not a string")
    if record.get("id") is None:
        raise ValueError("no 'id' (the record's own id makes an import idempotent)")
    if record.get("scope") is not None and not isinstance(record["scope"], str):
        raise ValueError("'scope' is not a string")
    try:  # a conversation's turn: `query` is its last user message, `history` the messages before it
        turn = standalone_turn(query.strip(), record["history"]) if record.get("history") else None
    except DistillError as err:
        raise ValueError(f"'history': {err}") from None
    chunks = context_chunks(record.get("contexts") or [])
    refused = bool(record.get("refused", False)) or not answer.strip()
    cited = [] if refused else cited_contexts(answer, chunks, record.get("citations"))
    try:
        asked_at = utc(record.get("timestamp"))
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"timestamp {record.get('timestamp')!r} is not ISO 8601 or epoch seconds") from None
    latency = record.get("latency_ms")
    return Trace(
        query_id=str(record["id"]), scope=record.get("scope"), query=turn.question if turn else query.strip(),
        answer="" if refused else answer.strip(),
        citations=[c["chunk_id"] for c in cited],
        cited_doc_versions=[{"doc_id": c["doc_id"], "version": c["version"]} for c in cited],
        retrieved=[c["chunk_id"] for c in chunks], refused=refused,
        refusal_reason=("declined" if record.get("refused") else "empty_answer") if refused else None,
        route="rag", route_reason=route_reason, top_score=None, score_margin=None, retriever_agreement=None,
        mean_logprob=None, groundedness=groundedness(answer, cited) if cited else None, citation_valid=bool(cited),
        latency_ms=float(latency) if isinstance(latency, (int, float)) else 0.0, retrieval_ms=0.0,
        prompt_tokens=int(record.get("prompt_tokens") or 0), completion_tokens=int(record.get("completion_tokens") or 0),
        model=str(record.get("model") or ""), backend=str(record.get("backend") or "external"), asked_at=asked_at,
        origin="logger" if route_reason == "logged" else "import", raw_message=turn.message if turn else None,
        rewrite_method=turn.method if turn else None, conversation_hash=turn.conversation_hash if turn else None)


# ---------------------------------------------------------------------------------------------
# OpenTelemetry GenAI spans (OTLP JSON, as an OpenTelemetry collector's file exporter writes it)
# ---------------------------------------------------------------------------------------------

def _value(value: dict):
    """An OTLP JSON AnyValue as a Python value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])  # int64 is a JSON string in the proto3 mapping
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return {kv["key"]: _value(kv.get("value", {})) for kv in value["kvlistValue"].get("values", [])}
    return None


def _json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _retrieval(attrs: dict) -> tuple[str | None, list[dict]] | None:
    """(query, contexts) of a retrieval span, in the GenAI conventions or OpenInference's; None if
    the span is no retrieval."""
    if attrs.get("gen_ai.operation.name") == "retrieval":
        documents = _json(attrs.get("gen_ai.retrieval.documents")) or []
        contexts = [{"id": d.get("id"), "text": d.get("content") or d.get("text") or "",
                     **({"version": d["version"]} if isinstance(d.get("version"), int) else {})}
                    for d in documents if isinstance(d, dict)]
        return attrs.get("gen_ai.retrieval.query.text"), contexts
    if attrs.get("openinference.span.kind") == "RETRIEVER":
        contexts, i = [], 0
        while f"retrieval.documents.{i}.document.content" in attrs or f"retrieval.documents.{i}.document.id" in attrs:
            prefix = f"retrieval.documents.{i}.document."
            contexts.append({"id": attrs.get(prefix + "id", f"doc-{i}"), "text": attrs.get(prefix + "content", "")})
            i += 1
        return attrs.get("input.value"), contexts
    return None


def _completion(attrs: dict) -> dict | None:
    """{answer, model, prompt_tokens, completion_tokens} of an LLM span; None if it is no LLM call."""
    llm = attrs.get("gen_ai.operation.name") in ("chat", "text_completion", "generate_content") \
        or attrs.get("openinference.span.kind") == "LLM"
    if not llm:
        return None
    answer = None
    for message in _json(attrs.get("gen_ai.output.messages")) or []:  # the current conventions
        if isinstance(message, dict):
            answer = "".join(p.get("content", "") for p in message.get("parts", []) if p.get("type") == "text")
    answer = answer if answer is not None else attrs.get("gen_ai.completion.0.content",  # older, OpenLLMetry
                                                         attrs.get("llm.output_messages.0.message.content",  # OpenInference
                                                                   attrs.get("output.value")))
    return {"answer": answer or "",
            "model": attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model") or attrs.get("llm.model_name"),
            "prompt_tokens": attrs.get("gen_ai.usage.input_tokens", attrs.get("llm.token_count.prompt")),
            "completion_tokens": attrs.get("gen_ai.usage.output_tokens", attrs.get("llm.token_count.completion"))}


def otlp_records(requests: Iterator[tuple[int, dict]]) -> Iterator[tuple[int, dict | str]]:
    """Records of the documented form from OTLP JSON export requests ((line, request) pairs): the
    spans of each trace id are joined, its retrieval span giving the query and contexts and its last
    LLM span the answer; the id is the trace id, the time its first span's start. A trace without
    both is reported as a problem (a string) at the line of its first span."""
    traces: dict[str, dict] = {}
    for line, request in requests:
        for resource in request.get("resourceSpans", []):
            for scope_spans in resource.get("scopeSpans", []):
                for span in scope_spans.get("spans", []):
                    attrs = {a["key"]: _value(a.get("value", {})) for a in span.get("attributes", [])}
                    entry = traces.setdefault(span.get("traceId", ""), {"line": line, "start": None, "end": None})
                    start, end = int(span.get("startTimeUnixNano", 0)), int(span.get("endTimeUnixNano", 0))
                    entry["start"] = start if entry["start"] is None else min(entry["start"], start)
                    entry["end"] = end if entry["end"] is None else max(entry["end"], end)
                    if "distill.scope" in attrs:
                        entry["scope"] = attrs["distill.scope"]
                    if (found := _retrieval(attrs)) is not None:
                        entry["query"], entry["contexts"] = found
                    if (completion := _completion(attrs)) is not None and end >= entry.get("llm_end", -1):
                        entry.update(completion, llm_end=end)
    for trace_id, entry in traces.items():
        if not entry.get("query") or "answer" not in entry:
            yield entry["line"], f"trace {trace_id!r} has no {'retrieval' if not entry.get('query') else 'LLM'} span " \
                                 f"with its content (gen_ai.retrieval.query.text / gen_ai.output.messages)"
            continue
        yield entry["line"], {"id": trace_id, "query": entry["query"], "scope": entry.get("scope"),
                              "timestamp": entry["start"] / 1e9, "answer": entry["answer"],
                              "contexts": entry.get("contexts", []), "model": entry.get("model"),
                              "prompt_tokens": entry.get("prompt_tokens"), "completion_tokens": entry.get("completion_tokens"),
                              "latency_ms": (entry["end"] - entry["start"]) / 1e6}


# ---------------------------------------------------------------------------------------------
# distill import
# ---------------------------------------------------------------------------------------------

@dataclass
class ImportReport:
    records: int = 0
    imported: int = 0
    already_stored: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)


def _lines(path: Path) -> Iterator[tuple[int, dict | str]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as err:
                yield number, f"not JSON ({err.msg})"


def detect_format(path: Path) -> str:
    """'otlp' when the first record holds resourceSpans, else 'jsonl'."""
    for _, first in _lines(path):
        return "otlp" if isinstance(first, dict) and "resourceSpans" in first else "jsonl"
    return "jsonl"


def import_file(workspace: Workspace, path: Path, fmt: str = "auto", strict: bool = False,
                on_progress=None) -> ImportReport:
    """Import the traces in `path` (JSON lines of records, or OTLP JSON) into the trace store.

    Records are committed in batches of BATCH; a record whose id is stored is skipped, so a rerun
    (or a run killed halfway and run again) adds only what is missing. A bad record is reported with
    its line number and skipped, or, with `strict`, stops the import before anything of its batch
    is written. JSON lines are parsed by worker processes, one per CPU, while this one writes; at
    most two batches per worker are in memory at once."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"{path} is not a file; pass a JSON lines file of traces (docs/byo-rag.md)")
    try:
        return _import(workspace, path, fmt, strict, on_progress)
    except UnicodeDecodeError as err:
        raise DistillError(f"{path} is not UTF-8 text (byte {err.start} of a line); export the traces as UTF-8 "
                           f"JSON lines") from None


def _import(workspace: Workspace, path: Path, fmt: str, strict: bool, on_progress) -> ImportReport:
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in IMPORTERS:
        raise DistillError(f"unknown import format '{fmt}'; use {', '.join(IMPORTERS)} or auto")
    report = ImportReport()
    batches = IMPORTERS[fmt](path, strict, report)
    for table, records, bad in batches:
        report.records += records
        if bad and strict:
            number, problem = bad[0]
            raise DistillError(f"{path}:{number}: {problem}; fix the record or drop --strict to skip it")
        report.bad += bad
        if table.num_rows:
            with TraceStore(workspace.traces_db) as store:
                added = store.append_table(table)
            report.imported += added
            report.already_stored += table.num_rows - added
        if on_progress:
            on_progress(records)
    return report


def _parse(lines: list[tuple[int, str]]):
    """(trace table, records, [(line, problem)]) for a batch of JSON lines: a worker's job."""
    traces, bad = [], []
    for number, line in lines:
        try:
            traces.append(to_trace(json.loads(line)))
        except json.JSONDecodeError as err:
            bad.append((number, f"not JSON ({err.msg})"))
        except (ValueError, TypeError) as err:
            bad.append((number, str(err)))
    return trace_table(traces), len(lines), bad


def _parsed_batches(path: Path, strict: bool, report: ImportReport):
    """`_parse` of each batch of the file's lines, in order, by a pool of worker processes (a bad
    line is reported by the batch it is in: `strict` and `report` are the caller's)."""
    import multiprocessing
    from collections import deque

    def chunks():
        batch = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    batch.append((number, line))
                if len(batch) == BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    workers = max(1, min(os.cpu_count() or 1, 8))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: deque = deque()
        for batch in chunks():
            pending.append(pool.apply_async(_parse, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _otlp_batches(path: Path, strict: bool, report: ImportReport):
    """OTLP JSON as `_parse` gives JSON lines: the spans of the whole file are joined first."""
    traces, bad, records = [], [], 0
    for number, record in otlp_records(_requests(path, strict, report)):
        records += 1
        try:
            if isinstance(record, str):
                raise ValueError(record)
            traces.append(to_trace(record))
        except (ValueError, TypeError) as err:
            bad.append((number, str(err)))
        if len(traces) >= BATCH:
            yield trace_table(traces), records, bad
            traces, bad, records = [], [], 0
    yield trace_table(traces), records, bad


def _requests(path: Path, strict: bool, report: ImportReport) -> Iterator[tuple[int, dict]]:
    """The OTLP export requests of `path`; a line that is not JSON is reported (or, strict, stops)."""
    for number, request in _lines(path):
        if isinstance(request, str):
            if strict:
                raise DistillError(f"{path}:{number}: {request}; fix the line or drop --strict to skip it")
            report.bad.append((number, request))
            continue
        yield number, request


class TraceSource(Protocol):
    """An import format: the file's traces as batches of (trace table, records read, [(line,
    problem)]), in order; a batch is committed before the next is read."""

    def __call__(self, path: Path, strict: bool, report: ImportReport) -> Iterator[tuple[Any, int, list]]: ...


IMPORTERS: dict[str, TraceSource] = {"jsonl": _parsed_batches, "otlp": _otlp_batches}  # --format -> its reader


# ---------------------------------------------------------------------------------------------
# TraceLogger: the two lines a service adds
# ---------------------------------------------------------------------------------------------

class TraceLogger:
    """Log a RAG service's answers as distill traces, from any thread, without waiting on a disk.

        from distill import TraceLogger
        logger = TraceLogger("ws")                  # the distill workspace (or $DISTILL_HOME)
        logger.log(query=question, answer=answer, contexts=[{"id": d.id, "text": d.text} for d in docs])
        logger.close()                              # at shutdown: everything logged is on disk

    A record is checked at once (a bad one raises ValueError in the caller), then written from a
    background thread, in batches, to this process's own segment beside the trace store. The next
    distill command that opens the store folds it in (`store.SegmentLog`), so a running service never
    holds the store's lock. The keyword arguments are the record form's fields (module docstring);
    `id` defaults to a fresh one. `logger.feedback(trace_id, score)` records a user's rating of it.
    """

    def __init__(self, home: Path | str | None = None):
        self.workspace = Workspace.resolve(home)
        self._writer = TraceWriter(self.workspace.traces_db)
        self._recent = RecentTraces()
        self._journal = FeedbackJournal(feedback_folder(self.workspace.traces_db))

    def log(self, *, query: str, answer: str, contexts: list[dict], **fields) -> str:
        """Queue one answer; returns its id. In a conversation, `query` is the last user message and
        `history=` the messages before it (OpenAI-style): the trace is of its standalone question."""
        record = {"id": fields.pop("id", None) or uuid.uuid4().hex, "query": query, "answer": answer,
                  "contexts": contexts, **fields}
        trace = to_trace(record, route_reason="logged")
        self._writer.put("trace", trace)
        self._recent.remember(trace)
        return trace.query_id

    def feedback(self, trace_id: str, score: float | bool, comment: str | None = None, source: str | None = None,
                 name: str | None = None, id: str | None = None) -> dict:
        """A user's rating of a logged answer (a number in [-1, 1], or True / False), durable when
        this returns; every running router acts on it within `router.reload_s` (feedback.py). An
        unknown trace id raises `feedback.UnknownTrace`, a bad field DistillError."""
        trace = self._recent.find(trace_id, self.workspace.traces_db)
        fields = {"score": score, "comment": comment, "source": source, "name": name, "id": id}
        rating = Rating.of({k: v for k, v in fields.items() if v is not None}, trace, "logger",
                           self.workspace.config().feedback.default_source).record()
        self._journal.append([rating])
        return rating

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "TraceLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
