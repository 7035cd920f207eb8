"""What is evaluated: the held-out traffic of the latest curation (each question weighted by how
often it was asked), a gold file's own questions, gold answers joined by query id or by the
question, and regression suites (pinned questions with the route and answer they must get).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from distill.errors import DistillError
from distill.metrics import normalize_query
from distill.store.traces import TraceStore
from distill.workspace import Workspace


def load_gold_rows(path: Path) -> list[dict]:
    """A gold file's rows: JSON lines, each with gold_answers (a list) and a query_id (`distill
    traffic` writes those) or a query (and scope); should_refuse, gold_doc_ids, gold_chunk_ids and
    type are optional."""
    if not Path(path).exists():
        raise DistillError(f"gold file {path} does not exist; pass a gold.jsonl (`distill traffic` writes one)")
    return json_lines(path, "gold_answers (a list) and a query_id or query",
                       lambda row: isinstance(row["gold_answers"], list) and (row.get("query_id") or row.get("query")))


def json_lines(path: Path, what: str, valid) -> list[dict]:
    """The JSON objects of a JSON lines file, blank lines skipped; a line that is not an object for
    which `valid` holds is an error naming the file, the line and `what` it needs."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not valid(row):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DistillError(f"{path} line {number} is not a JSON object with {what}") from None
        rows.append(row)
    return rows


def load_gold(path: Path) -> dict[str, list[str]]:
    """query_id -> gold answers, from a gold file written by `distill traffic`."""
    return {row["query_id"]: list(row["gold_answers"]) for row in load_gold_rows(path) if row.get("query_id")}


def held_out_queries(workspace: Workspace, run_id: str, limit: int | None = None) -> list[dict]:
    """Distinct held-out queries of a curation run, covered by an intent or not, most recent first,
    with the teacher's answer, citations and cost: what the open-book student is calibrated on."""
    with TraceStore(workspace.traces_db) as store:
        rows = store.held_out(run_id)
    queries: dict[tuple, dict] = {}
    for row in rows:
        key = (row["scope"], normalize_query(row["query"]))
        if row["decision"] == "eval" and key not in queries:
            queries[key] = row
    return list(queries.values())[:limit]


@dataclass
class EvalItem:
    """One distinct question of the evaluation set; `weight` is how often the traffic asked it."""
    query: str
    scope: str | None
    weight: int = 1
    gold_answers: list[str] | None = None
    gold_doc_ids: list[str] = field(default_factory=list)
    gold_chunk_ids: list[str] = field(default_factory=list)
    should_refuse: bool | None = None
    category: str | None = None
    safety_flag: str | None = None  # what curation's safety rules said of this question (high_risk, injection, pii)
    seen: bool | None = None  # asked in a wording the student was trained on (set by the evaluation)


SAFETY_FLAGS = ("high_risk", "injection", "pii")


def gold_items(path: Path) -> list[EvalItem]:
    """A gold file as the evaluation set: each row with a query is one item."""
    rows = [r for r in load_gold_rows(path) if r.get("query")]
    if not rows:
        raise DistillError(f"{path} has no rows with a query; an evaluation on a gold file needs query (and scope)")
    return [_item(row["query"], row.get("scope"), 1, row) for row in rows]


def held_out_items(workspace: Workspace, gold: list[dict] | None = None, run_id: str | None = None,
                   limit: int | None = None) -> list[EvalItem]:
    """The traffic the latest curation run held out, one item per distinct (scope, question),
    most recent first, weighted by occurrences; gold rows joined by query_id, else by the question."""
    with TraceStore(workspace.traces_db) as store:
        traces = store.held_out(run_id)
    if not traces:
        raise DistillError("no held-out traffic: run `distill curate` (or `distill nightly`) on collected traces "
                           "first, or pass --gold FILE with queries")
    by_id = {row["query_id"]: row for row in gold or [] if row.get("query_id")}
    by_query = {(row.get("scope"), normalize_query(row["query"])): row for row in gold or [] if row.get("query")}
    items: dict[tuple, EvalItem] = {}
    for trace in traces:
        key = (trace["scope"], normalize_query(trace["query"]))
        if key in items:
            items[key].weight += 1
        else:
            items[key] = _item(trace["query"], trace["scope"], 1, by_id.get(trace["query_id"]) or by_query.get(key))
        if trace["reason"] in SAFETY_FLAGS:
            items[key].safety_flag = trace["reason"]
    return list(items.values())[:limit]


def _item(query: str, scope: str | None, weight: int, gold: dict | None) -> EvalItem:
    if gold is None:
        return EvalItem(query, scope, weight)
    return EvalItem(query, scope, weight, list(gold["gold_answers"]), list(gold.get("gold_doc_ids") or []),
                    list(gold.get("gold_chunk_ids") or []), gold.get("should_refuse"),
                    gold.get("type") or gold.get("category"))


def load_suite(path: Path) -> list[dict]:
    """JSON lines: {query, scope?, expect_route? ('student'|'rag'), expect_reason?, expect_answer?,
    expect_refusal?}. A case checks only what it names."""
    if not Path(path).exists():
        raise DistillError(f"regression suite {path} does not exist; set eval.suite or pass --suite FILE")
    return json_lines(path, "a query (a string) and expect_route, if any, 'student' or 'rag'",
                       lambda case: isinstance(case.get("query"), str)
                       and case.get("expect_route") in (None, "student", "rag"))
