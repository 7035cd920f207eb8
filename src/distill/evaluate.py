"""Score a student version on the held-out recent window, on the intents it covers.

The curation run that built a training set also held out its most recent traces (`curate.eval_days`):
the teacher answered them after the cutoff, so they test a student the way production will, with
newer wordings of the intents it learned. The score is SQuAD token F1 against the teacher's answer
(always there) and, when a gold file is given, against gold answers next to the teacher's own.

    >>> queries = covered_eval_queries(workspace, manifest)     # distinct held-out queries it covers
    >>> scores = evaluate_student(Student.load(path), queries)
    >>> scores["f1_vs_teacher"], scores["cache_f1_vs_teacher"]
    (0.84, 0.97)

`cache_f1_vs_teacher` is what replaying each cluster's trained answer would score (a semantic
cache): the ceiling for a student that learned its clusters perfectly.
"""

from __future__ import annotations

import json
import re
import string
import time
from collections import Counter
from pathlib import Path

import numpy as np

from distill.config import Workspace
from distill.curate import REFUSAL_COMPLETION, normalize_query
from distill.errors import DistillError
from distill.store import TraceStore

_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: 'Refunds take 30 days.' vs 'refunds within 30 days' -> 0.67."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, references: list[str]) -> float:
    return max((token_f1(prediction, r) for r in references), default=0.0)


def load_gold(path: Path) -> dict[str, list[str]]:
    """A gold file (`distill traffic` writes one): JSON lines with query_id and gold_answers."""
    if not Path(path).exists():
        raise DistillError(f"gold file {path} does not exist; pass the gold.jsonl written by `distill traffic`")
    gold = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            gold[row["query_id"]] = list(row["gold_answers"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DistillError(f"{path} line {number} is not a JSON object with query_id and gold_answers") from None
    return gold


def covered_eval_queries(workspace: Workspace, manifest: dict, run_id: str | None = None,
                         limit: int | None = None) -> list[dict]:
    """Distinct held-out queries of a curation run (default: the one the student was trained from)
    whose cluster the student was trained on, most recent first, with the teacher's answer (a
    refusal reads as the student's refusal completion) and the cluster's trained answer."""
    run_id = run_id or manifest.get("curation_run_id")
    if not run_id:
        raise DistillError(f"student {manifest.get('version')} records no curation run; pass one to evaluate on")
    covered = {c["cluster_id"] for c in manifest.get("clusters", [])}
    with TraceStore(workspace.traces_db) as store:
        rows = store.eval_window(run_id)
    queries: dict[tuple, dict] = {}
    for row in rows:
        key = (row["scope"], normalize_query(row["query"]))
        if row["cluster_id"] not in covered or key in queries:
            continue
        queries[key] = {**row, "answer": REFUSAL_COMPLETION if row["refused"] else row["answer"],
                        "cluster_answer": row["cluster_answer"] or REFUSAL_COMPLETION}
    return list(queries.values())[:limit]


def evaluate_student(student, queries: list[dict], gold: dict[str, list[str]] | None = None,
                     batch_size: int = 16, progress: bool = False) -> dict:
    """Answer `queries` with the student in batches and score the answers; returns plain figures."""
    if not queries:
        return {"queries": 0}
    from tqdm.auto import tqdm

    answers, started = [], time.perf_counter()
    batches = range(0, len(queries), batch_size)
    for start in tqdm(batches, desc="evaluating", unit="batch", disable=not progress, leave=False):
        batch = queries[start:start + batch_size]
        answers += [g.text for g in student.answer_batch([(q["query"], q["scope"]) for q in batch])]
    elapsed = time.perf_counter() - started
    scores = {
        "queries": len(queries),
        "f1_vs_teacher": _mean(token_f1(a, q["answer"]) for a, q in zip(answers, queries)),
        "exact_vs_teacher": _mean(normalize(a) == normalize(q["answer"]) for a, q in zip(answers, queries)),
        "cache_f1_vs_teacher": _mean(token_f1(q["cluster_answer"], q["answer"]) for q in queries),
        "seconds_per_query": round(elapsed / len(queries), 4),
    }
    graded = [(a, q, gold[q["query_id"]]) for a, q in zip(answers, queries) if gold and q["query_id"] in gold]
    if graded:
        scores.update(gold_queries=len(graded), f1_vs_gold=_mean(best_f1(a, g) for a, _, g in graded),
                      teacher_f1_vs_gold=_mean(best_f1(q["answer"], g) for _, q, g in graded))
    return scores


def _mean(values) -> float:
    return round(float(np.mean([float(v) for v in values])), 4)
