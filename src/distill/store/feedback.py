"""Users' ratings of answers: stored like traces, weighed per source, and acted on at once.

A person who reads an answer can tell what no check in the pipeline can: that the cited entry does
not answer the question. A rating is a number in [-1, 1] given to one trace's answer (true = 1,
false = -1); map other scales onto it before sending, for example thumbs up / down = 1 / -1, a
rating r of 1 to 5 stars = (r - 3) / 2, a Langfuse NUMERIC score in [0, 1] = 2 * value - 1.

    rating = Rating.of({"trace_id": routed.trace_id, "score": False, "source": "user-17"}, trace, "http")
    rating.score, rating.source  # (-1.0, 'user-17')

Ways in, each resolving the trace id first (an unknown one is `UnknownTrace`, HTTP 404):
`Router.feedback(...)` (and `POST /v1/feedback` on `distill serve`), `TraceLogger.feedback(...)`
for a team's own service, and `distill import` of Langfuse-style score lines
(`{"traceId"|"trace_id", "name", "value", "id"?, "comment"?, "source"?}`). Every rating goes to the
process's feedback journal (`store.FeedbackJournal`), durable when the call returns; the next command
that opens the trace store folds it into the `feedback` table, deduplicated by `feedback_id` (the
caller's id, or a hash of the trace, source, name and score, so a resent or re-imported rating is
stored once).

Weighing (`Verdicts`): a rating counts unless its source already had
`feedback.max_per_source_per_hour` ratings counted in the hour before it (one user cannot withdraw
everything). Each source's counted ratings of one thing are averaged to one vote, and the thing's
score is the mean of its sources' votes: several ratings are weighed, not the last one alone. A
thing scoring below `feedback.withdraw_below` (default 0) is wrong. Each rating rates three things:

- an answer to a wording (scope, normalized question, normalized answer): curation never trains on a
  teacher trace that gave it (reason `rated_wrong`), and the router never serves it from the fast
  path again, whatever the student version (reason `rated_wrong`), until ratings lift it;
- an intent of a student version (ratings of answers the fast path served for it): it leaves the
  fast path in every running router (reason `withdrawn`) until ratings lift it, or a new student
  trained without the rated-wrong traces is promoted;
- the chunk an answer cited first, for its wording (`RatedEvidence`): the teacher's next retrieval
  for a question like it (cosine at least `feedback.similar_question`, same scope) leaves out a chunk
  rated wrong and puts one rated right first, so the teacher answers from the next candidate instead.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable

import numpy as np

from distill.config import FeedbackConfig
from distill.errors import DistillError
from distill.metrics import normalize, normalize_query
from distill.store.schema import RATED_TRACE_COLUMNS, Trace
from distill.store.segments import find_trace
from distill.timestamps import utc


class UnknownTrace(DistillError):
    """A rating names a trace id that no segment and no store holds."""


class RecentTraces:
    """The last `size` traces a process wrote, by id, as a rating needs them: a rating usually
    arrives seconds after its answer, before the answer's segment is even written."""

    def __init__(self, size: int = 100_000):
        self.size = size
        self._traces: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, trace: Trace) -> None:
        row = {name: getattr(trace, name) for name in RATED_TRACE_COLUMNS}
        row["trace_id"] = trace.trace_id or trace.query_id  # as the store keys it
        with self._lock:
            self._traces[row["trace_id"]] = row
            if len(self._traces) > self.size:
                self._traces.popitem(last=False)

    def find(self, trace_id, traces_db: Path | None) -> dict:
        """The trace, from memory, else the segments and the store; UnknownTrace if none has it."""
        if not isinstance(trace_id, str) or not trace_id:
            raise DistillError("'trace_id' must be the distill.trace_id of an answer")
        with self._lock:
            trace = self._traces.get(trace_id)
        if trace is None and traces_db is not None:
            trace = find_trace(traces_db, trace_id)
        if trace is None:
            raise UnknownTrace(f"no answer has trace id {trace_id!r}; send the distill.trace_id of a response")
        return trace


def score_of(value, field: str = "score") -> float:
    """A rating's score in [-1, 1]: a boolean is 1 or -1; anything else is a one-line error."""
    if isinstance(value, bool):
        return 1.0 if value else -1.0
    if isinstance(value, (int, float)) and -1.0 <= float(value) <= 1.0:
        return float(value)
    raise DistillError(f"'{field}' must be a number from -1 to 1 or a boolean (got {value!r}); map other scales "
                       f"first, e.g. 1-5 stars r as (r - 3) / 2")


def _text(payload: dict, field: str, limit: int = 2000) -> str | None:
    value = payload.get(field)
    if value is not None and not isinstance(value, str):
        raise DistillError(f"'{field}' must be a string (got {type(value).__name__})")
    return value[:limit] if value else None


@dataclass
class Rating:
    """One rating, with what was rated as it was shown (the trace's route, intent and answer), so
    that every router can act on it without looking the trace up."""

    feedback_id: str
    trace_id: str
    score: float
    name: str | None
    comment: str | None
    source: str
    created_at: datetime
    received_by: str
    route: str | None
    backend: str | None
    student_version: str | None
    intent_id: str | None
    scope: str | None
    query: str | None
    answer: str | None
    citations: list[str] | None

    @classmethod
    def of(cls, payload: dict, trace: dict, received_by: str, default_source: str = "anonymous") -> "Rating":
        """A rating from a request's fields (`trace_id`, `score` or `value`, and optional `name`,
        `comment`, `source`, `id`) and the trace it names; a bad field is a one-line DistillError."""
        score = score_of(payload["score"] if "score" in payload else payload.get("value"),
                         "score" if "score" in payload else "value")
        name, source = _text(payload, "name", 200), _text(payload, "source", 200) or default_source
        given = _text(payload, "id", 200)
        key = f"{trace['trace_id']}\x1f{source}\x1f{name or ''}\x1f{score}"
        return cls(feedback_id=given or hashlib.sha256(key.encode()).hexdigest()[:32], trace_id=trace["trace_id"],
                   score=score, name=name, comment=_text(payload, "comment"), source=source,
                   created_at=_when(payload.get("timestamp")), received_by=received_by, route=trace.get("route"),
                   backend=trace.get("backend"), student_version=trace.get("student_version"),
                   intent_id=trace.get("intent_id"), scope=trace.get("scope"), query=trace.get("query"),
                   answer=trace.get("answer"), citations=list(trace.get("citations") or []))

    def record(self) -> dict:
        return dict(self.__dict__)  # shallow: `asdict` deep-copies, and costs most of an import


def _when(value) -> datetime:
    try:
        return utc(value)
    except (ValueError, TypeError, OverflowError):
        raise DistillError(f"'timestamp' must be an ISO 8601 time (got {value!r})") from None


def answer_key(scope: str | None, query: str, answer: str) -> tuple:
    """What an answer-to-a-wording rating is about: ('answer', scope, wording, normalized answer)."""
    return ("answer", scope, normalize_query(query or ""), normalize(answer or ""))


def intent_key(student_version: str | None, intent_id: str | None) -> tuple:
    return ("intent", student_version, intent_id)


def evidence_key(scope: str | None, query: str, chunk_id: str) -> tuple:
    """What a rating says of the chunk its answer cited first: ('evidence', scope, wording, chunk)."""
    return ("evidence", scope, normalize_query(query or ""), chunk_id)


class Verdicts:
    """The weighed score of every rated answer and intent, fed ratings in any order once each.

        verdicts = Verdicts(config.feedback, store.feedback())   # every stored rating, weighed
        verdicts.add([rating])                      # a new one; returns the ratings that counted
        verdicts.wrong(answer_key("billing", "refund window?", "14 days."))  # True
    """

    def __init__(self, config: FeedbackConfig, ratings: Iterable[dict | Rating] = ()):
        self.config = config
        self._seen: set[str] = set()
        self._counted: dict[str, deque] = defaultdict(deque)  # source -> times of its counted ratings, last hour
        self._votes: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self._wrong: set[tuple] = set()
        self.add(ratings)

    def add(self, ratings: Iterable[dict | Rating]) -> list[dict]:
        """Weigh new ratings (oldest first; one already seen is ignored); returns those that counted."""
        fresh = [r.record() if isinstance(r, Rating) else dict(r) for r in ratings]
        for rating in fresh:
            rating["created_at"] = _when(rating["created_at"]) if not isinstance(rating["created_at"], datetime) \
                else rating["created_at"]
        fresh = sorted((r for r in fresh if r["feedback_id"] not in self._seen), key=lambda r: r["created_at"])
        counted = []
        for rating in fresh:
            self._seen.add(rating["feedback_id"])
            if not self._within_limit(rating):
                continue
            counted.append(rating)
            for key in self.keys(rating):
                self._votes[key][rating["source"]].append(float(rating["score"]))
                self._wrong.discard(key)
                if self.score(key) < self.config.withdraw_below:
                    self._wrong.add(key)
        return counted

    @staticmethod
    def keys(rating: dict) -> list[tuple]:
        """The things a rating is about: the answer to its wording, and the intent that served it."""
        keys = [answer_key(rating.get("scope"), rating.get("query") or "", rating.get("answer") or "")]
        if rating.get("route") in ("replay", "student") and rating.get("intent_id"):
            keys.append(intent_key(rating.get("student_version"), rating["intent_id"]))
        if rating.get("citations"):
            keys.append(evidence_key(rating.get("scope"), rating.get("query") or "", rating["citations"][0]))
        return keys

    def _within_limit(self, rating: dict) -> bool:
        when = rating["created_at"]
        times = self._counted[rating["source"]]
        while times and times[0] <= when - timedelta(hours=1):
            times.popleft()
        if len(times) >= self.config.max_per_source_per_hour:
            return False
        times.append(when)
        return True

    def score(self, key: tuple) -> float | None:
        """The mean over sources of each source's mean rating of `key` (None: never rated)."""
        votes = self._votes.get(key)
        if not votes:
            return None
        return sum(sum(v) / len(v) for v in votes.values()) / len(votes)

    def wrong(self, key: tuple) -> bool:
        return key in self._wrong

    def withdrawn_intents(self, student_version: str | None) -> set[str]:
        return {key[2] for key in self._wrong if key[0] == "intent" and key[1] == student_version}

    def rated_evidence(self) -> dict[tuple, float]:
        """(scope, wording, chunk) -> the weighed score of that chunk as the answer to that wording."""
        return {key[1:]: self.score(key) for key in self._votes if key[0] == "evidence"}


class RatedEvidence:
    """Users' verdicts on the chunks the teacher answered from, applied to its next retrievals.

    For each question, the rated wordings of its scope at cosine `similar` or more are looked up
    (one matrix product per batch): a chunk rated wrong for one of them leaves the hits, a chunk
    rated right goes ahead of them (sorting is stable: retrieval's order holds otherwise). The
    teacher then answers from the next candidate, as a person corrected it to, or, with none left,
    refuses.

        rated = RatedEvidence(retriever.embed_queries, similar=0.9)
        rated.update(verdicts)                 # after new ratings
        rated.reorder(retrievals, vectors)     # in place, before the evidence is chosen
    """

    def __init__(self, embed_queries, similar: float, withdraw_below: float = 0.0):
        self.embed_queries, self.similar, self.withdraw_below = embed_queries, similar, withdraw_below
        self._scores: dict[tuple, float] = {}
        # (rated wordings [(scope, wording)], their vectors, (scope, wording) -> chunk -> score), swapped
        # in as one value so a concurrent `reorder` never sees half an update
        self._state: tuple[list, np.ndarray | None, dict] = ([], None, {})

    def update(self, verdicts: Verdicts) -> None:
        scores = verdicts.rated_evidence()
        if scores == self._scores:
            return
        chunks: dict[tuple, dict[str, float]] = defaultdict(dict)
        for (scope, wording, chunk), score in scores.items():
            chunks[(scope, wording)][chunk] = score
        wordings, vectors, _ = self._state
        known = set(wordings)
        new = [w for w in chunks if w not in known]
        if new:
            added = self.embed_queries([wording for _, wording in new])
            wordings, vectors = wordings + new, added if vectors is None else np.vstack([vectors, added])
        self._scores, self._state = scores, (wordings, vectors, dict(chunks))

    def __len__(self) -> int:
        return len(self._scores)

    def reorder(self, retrievals: list, vectors: np.ndarray) -> None:
        wordings, rated_vectors, chunks = self._state
        if rated_vectors is None:
            return
        similarity = vectors @ rated_vectors.T
        for retrieval, row in zip(retrievals, similarity):
            verdict: dict[str, float] = {}
            for at in np.flatnonzero(row >= self.similar):
                scope, wording = wordings[at]
                if scope == retrieval.scope:
                    for chunk, score in chunks.get((scope, wording), {}).items():
                        verdict[chunk] = min(verdict.get(chunk, score), score)  # on doubt, the worse verdict
            if verdict:
                kept = [hit for hit in retrieval.hits if not verdict.get(hit.chunk["chunk_id"], 0.0) < self.withdraw_below]
                retrieval.hits = sorted(kept, key=lambda hit: -(verdict.get(hit.chunk["chunk_id"], 0.0) > 0))


@dataclass
class ScoresImported:
    records: int = 0
    imported: int = 0
    already_stored: int = 0
    bad: list = field(default_factory=list)


def detect_scores(path: Path) -> bool:
    """Whether a JSON lines file holds ratings (its first record is one), not traces."""
    import json

    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                try:
                    return is_score_record(json.loads(line))
                except ValueError:
                    return False
    return False


def langfuse_fields(record: dict) -> dict:
    """A Langfuse score (`{id, traceId, name, value, dataType?, comment?, authorUserId?, timestamp?}`)
    or a plain `{trace_id, score | value, ...}` line as `Rating.of` reads it. A BOOLEAN score's 0 / 1
    is -1 / 1; a NUMERIC one must already be in [-1, 1]."""
    fields = {key: record[key] for key in ("id", "name", "comment", "timestamp") if record.get(key) is not None}
    fields["trace_id"] = record.get("trace_id", record.get("traceId"))
    value = record.get("score", record.get("value"))
    if str(record.get("dataType", "")).upper() == "BOOLEAN" and value in (0, 1):
        value = bool(value)
    fields["score"] = value
    source = record.get("source") if "dataType" not in record else record.get("authorUserId") or record.get("source")
    if source is not None:
        fields["source"] = str(source)
    return fields


def is_score_record(record) -> bool:
    """Whether a JSON line is a rating (a trace id and a score or value, no question)."""
    return isinstance(record, dict) and ("trace_id" in record or "traceId" in record) and \
        ("score" in record or "value" in record) and "query" not in record


def import_scores(workspace, path: Path, strict: bool = False, on_progress=None, batch: int = 50_000):
    """`distill import` of rating lines (`langfuse_fields`): each names a stored trace; they are
    journaled (for running routers) and stored, deduplicated by id, so a rerun adds nothing. A bad line or
    an unknown trace id is reported by its line (with `strict`, it stops the import first)."""
    from distill.store.segments import FeedbackJournal, feedback_folder
    from distill.store.traces import TraceStore

    report = ScoresImported()
    config = workspace.config().feedback
    journal = FeedbackJournal(feedback_folder(workspace.traces_db))

    def flush(lines: list[tuple[int, dict]]) -> None:
        ratings = []
        with TraceStore(workspace.traces_db) as store:
            traces = store.traces_by_id([str(f["trace_id"]) for _, f in lines if f.get("trace_id")])
            for number, fields in lines:
                try:
                    trace = traces.get(fields.get("trace_id"))
                    if trace is None:
                        raise UnknownTrace(f"no stored trace has id {fields.get('trace_id')!r}")
                    ratings.append(Rating.of(fields, trace, "import", config.default_source).record())
                except DistillError as err:
                    if strict:
                        raise DistillError(f"{path}:{number}: {err}; fix the line or drop --strict to skip it") from None
                    report.bad.append((number, str(err)))
            stored = store.stored_feedback_ids([r["feedback_id"] for r in ratings])
            new = [r for r in ratings if r["feedback_id"] not in stored]  # a rerun journals nothing twice
            if new:  # journaled for the running routers, stored here at once
                report.imported += store.add_journaled_feedback(new, *journal.append(new))
        if on_progress:
            on_progress(len(lines))

    try:
        _read_scores(Path(path), strict, report, batch, flush)
    except UnicodeDecodeError as err:
        raise DistillError(f"{path} is not UTF-8 text (byte {err.start} of a line); export the ratings as UTF-8 "
                           f"JSON lines") from None
    report.already_stored = report.records - len(report.bad) - report.imported
    return report


def _read_scores(path: Path, strict: bool, report: ScoresImported, batch: int, flush) -> None:
    import json

    pending: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            report.records += 1
            try:
                record = json.loads(line)
                if not is_score_record(record):
                    raise DistillError("not a rating: it needs trace_id (or traceId) and score (or value)")
                pending.append((number, langfuse_fields(record)))
            except (ValueError, DistillError) as err:
                problem = f"not JSON ({err.msg})" if isinstance(err, json.JSONDecodeError) else str(err)
                if strict:
                    raise DistillError(f"{path}:{number}: {problem}; fix the line or drop --strict to skip it") from None
                report.bad.append((number, problem))
            if len(pending) >= batch:
                flush(pending)
                pending = []
    if pending:
        flush(pending)
