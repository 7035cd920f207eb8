"""When the open-book student may answer: its calibrated confidence, and whether it is cheaper.

The router sends the student what replay cannot take (open_book.py), but only under two bounds:

1. Confidence. At nightly time the candidate answers the held-out traces (those the teacher did
   not refuse before generating) from the evidence retrieved now, and each answer is labelled an
   error when it disagrees with the teacher's (calibrate.agrees: another document and token F1
   below `eval.success_f1`, or one of them refused). Only answers that cite a shown chunk and quote
   it can be served; among those, the confidence is the mean token log-probability, and the
   threshold is the lowest at which the expected error of the answers scoring at least that much
   stays within `router.max_error_rate` (calibrate.risk_curve: the same selective risk control as
   coverage). Too little evidence: no threshold, and the student serves nothing. At run time a
   shadow disagreement raises the threshold to just above the disagreeing answer's score; each
   agreement lowers it by `LOOSEN` of the way back.
2. Cost. An answer is routed to the student only when its measured cost is below the teacher's:
   the student's generation time at `eval.local_price_per_hour`, the teacher's at the configured
   API prices when it is a hosted LLM (`teacher.backend` openai or http with `eval.teacher_pricing
   = "api"`), else its own time here at the local price. Both start from the nightly measurement
   and follow the router's own answers (a moving average). With the extractive teacher on a CPU
   the student is slower, and the router says so: `teacher_cheaper`.

    gate = StudentGate.load(version_dir, max_error_rate=0.02, prices=config.eval, teacher_backend="openai")
    gate.threshold, gate.teacher_cheaper()  # (-0.31, False)
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from distill.learn.coverage import LOOSEN, TIGHTEN, agrees, risk_curve, threshold_at
from distill.learn.open_book import parse_answer, student_evidence
from distill.metrics import best_f1, token_f1
from distill.progress import track
from distill.rag.corpus import chunk_doc_version

CONFIDENCE_FILE = "student_confidence.json"
STUDENT_CHECKS = {  # the open-book student's checks, in the order the router runs them; the first that fails is the reason
    "uncalibrated": "the version has no confidence evidence (trained outside `distill nightly`): no student route, "
                    "and replay's reason stays the recorded one",
    "teacher_cheaper": "a teacher answer costs less than a student answer here (with the extractive teacher on a "
                       "CPU it does: the student is slower)",
    "confidence": "before generating: no confidence threshold keeps the expected error within `router.max_error_rate`; "
                  "after: the answer's mean token log-probability is below the calibrated threshold",
    "no_evidence": "the teacher is a team's own RAG, whose evidence distill cannot read",
    "not_answerable": "the teacher's own checks say the evidence does not answer the question",
    "student_busy": "the student's queue would wait longer than `router.student_timeout_s`",
    "student_error": "the student failed (an unreachable `student.endpoint`, an exception)",
    "student_timeout": "the student answered, but slower than `router.student_timeout_s`",
    "student_refused": "the student said it does not know",
    "not_quoted": "its answer cites no block it was shown, or does not quote the block it cites",
    "rated_wrong": "users rated this answer to this wording wrong",
}
API_BACKENDS = ("openai", "http")  # teachers billed per token when eval.teacher_pricing = "api"
MOVING = 0.1  # weight of one new answer in the moving averages of cost


def local_cost(ms: float, prices) -> float:
    """Dollars for `ms` of this machine's time at `eval.local_price_per_hour`."""
    return ms / 1000 * prices.local_price_per_hour / 3600


def teacher_cost(backend: str, latency_ms: float, prompt_tokens: int, completion_tokens: int, prices) -> float:
    """What one teacher answer costs: API prices for a hosted LLM, else its time here."""
    if backend in API_BACKENDS and prices.teacher_pricing == "api":
        return (prompt_tokens * prices.prompt_price_per_million
                + completion_tokens * prices.completion_price_per_million) / 1e6
    return local_cost(latency_ms, prices)


def fit(student, teacher, queries: list[dict], config, gold: dict | None = None, progress: bool = False) -> dict:
    """Answer `queries` (held-out traces: query, scope, answer, refused, citations, query_id) with the
    open-book student from the evidence `teacher` retrieves now; returns the confidence evidence
    (written beside the version as CONFIDENCE_FILE) and the figures the nightly gate reads."""
    cfg = config.student
    asked = []
    for q in queries:
        evidence, refusal, _ = student_evidence(teacher, q["query"], q["scope"], cfg)
        if refusal is None:
            asked.append((q, evidence))
    rows, spent_ms = [], 0.0
    for start in track(range(0, len(asked), cfg.max_batch), "student confidence", "batch", disable=not progress):
        batch = asked[start:start + cfg.max_batch]
        began = time.perf_counter()
        generations = student.answer_batch([(q["query"], q["scope"], ev) for q, ev in batch])
        spent_ms += (time.perf_counter() - began) * 1000
        for (q, ev), generation in zip(batch, generations):
            read = parse_answer(generation.text, ev)
            served = bool(read.chunk_id and read.quoted and not read.refused)
            doc = chunk_doc_version(read.chunk_id)[0] if read.chunk_id else None
            teacher_doc = chunk_doc_version(q["citations"][0])[0] if q.get("citations") else None
            agreed = agrees({"doc": doc, "answer": read.answer, "refused": read.refused},
                            {"doc": teacher_doc, "answer": q["answer"] or "", "refused": bool(q["refused"])},
                            config.eval.success_f1)
            rows.append({"query_id": q.get("query_id"), "query": q["query"], "scope": q["scope"],
                         "answer": read.answer, "refused": read.refused, "quoted": read.quoted, "served": served,
                         "score": generation.mean_logprob, "error": not agreed,
                         "f1_vs_teacher": round(token_f1(read.answer if not read.refused else "", q["answer"] or ""), 4)
                         if not q["refused"] else float(read.refused),
                         "prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens})
    student_ms = spent_ms / len(rows) if rows else None
    teachers = [q for q, _ in asked]
    teacher_ms = [q.get("latency_ms") or 0.0 for q in teachers]
    evidence = {
        "examples": [{"score": r["score"], "error": r["error"]} for r in rows if r["served"] and r["score"] is not None],
        "asked": len(rows), "student_ms": round(student_ms, 2) if student_ms else None,
        "student_cost_usd": local_cost(student_ms, config.eval) if student_ms else None,
        "teacher_cost_usd": _mean([teacher_cost(teacher.generator.backend, ms, q.get("prompt_tokens") or 0,
                                                q.get("completion_tokens") or 0, config.eval)
                                   for q, ms in zip(teachers, teacher_ms)]),
        "teacher_backend": teacher.generator.backend,
    }
    figures = {"queries": len(rows), "quoted": _mean([r["quoted"] for r in rows]),
               "f1_vs_teacher": _mean([r["f1_vs_teacher"] for r in rows]),
               "seconds_per_query": round(student_ms / 1000, 4) if student_ms else None,
               "prompt_tokens": _mean([r["prompt_tokens"] for r in rows]),
               "completion_tokens": _mean([r["completion_tokens"] for r in rows])}
    graded = [(r, gold[r["query_id"]]) for r in rows if gold and r["query_id"] in gold]
    if graded:
        figures.update(gold_queries=len(graded),
                       f1_vs_gold=_mean([best_f1("" if r["refused"] else r["answer"], g) for r, g in graded]),
                       teacher_f1_vs_gold=_mean([best_f1(q["answer"] or "", gold[q["query_id"]])
                                                 for q in teachers if q.get("query_id") in gold]))
    gate = StudentGate(evidence, config.router.max_error_rate, config.eval, evidence["teacher_backend"])
    figures.update(threshold=None if gate.threshold == float("inf") else round(gate.threshold, 4),
                   served_share=_mean([r["served"] and r["score"] is not None and r["score"] >= gate.threshold
                                       for r in rows]),
                   student_cost_usd=evidence["student_cost_usd"], teacher_cost_usd=evidence["teacher_cost_usd"])
    return {"evidence": evidence, "figures": figures, "rows": rows}


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(sum(values) / len(values), 8) if values else None


class StudentGate:
    """The open-book student's threshold and costs, as the router reads them (see the module docstring)."""

    def __init__(self, evidence: dict, max_error_rate: float, prices, teacher_backend: str):
        self.prices, self.teacher_backend = prices, teacher_backend
        self.fitted = bool(evidence)  # False: the version was never calibrated (trained outside `distill nightly`)
        examples = evidence.get("examples") or []
        curve = risk_curve([e["score"] for e in examples], [e["error"] for e in examples]) if examples else []
        self.calibrated = threshold_at(curve, max_error_rate) if curve else float("inf")
        self.threshold = self.calibrated
        self.student_cost = evidence.get("student_cost_usd")
        self.teacher_cost = evidence.get("teacher_cost_usd")
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path | None, max_error_rate: float, prices, teacher_backend: str) -> "StudentGate":
        """The gate of a student version (no file: a student that serves nothing)."""
        path = Path(folder) / CONFIDENCE_FILE if folder else None
        evidence = json.loads(path.read_text()) if path and path.exists() else {}
        return cls(evidence, max_error_rate, prices, teacher_backend)

    def teacher_cheaper(self) -> bool:
        """Whether a teacher answer costs no more than a student answer here (unknown costs: True)."""
        if self.student_cost is None or self.teacher_cost is None:
            return True
        return self.teacher_cost <= self.student_cost

    def confident(self, score: float | None) -> bool:
        return score is not None and score >= self.threshold

    def before_generating(self) -> str | None:
        """The gate's checks before the student is asked, in the router's order (STUDENT_CHECKS):
        the failing one, or None. Between these and `after_generating` the router checks that the
        evidence answers the question (`not_answerable`) and that the student can answer in time."""
        if not self.fitted:
            return "uncalibrated"
        if self.teacher_cheaper():
            return "teacher_cheaper"
        if self.threshold == float("inf"):  # no score keeps the expected error within the bound: nothing to generate
            return "confidence"
        return None

    def after_generating(self, read, score: float | None) -> str | None:
        """The gate's checks of the student's answer (`read`: open_book.parse_answer), in order."""
        if read.refused:
            return "student_refused"
        if not (read.chunk_id and read.quoted):
            return "not_quoted"
        return None if self.confident(score) else "confidence"

    def saw_teacher(self, latency_ms: float, prompt_tokens: int, completion_tokens: int) -> None:
        cost = teacher_cost(self.teacher_backend, latency_ms, prompt_tokens, completion_tokens, self.prices)
        with self._lock:
            self.teacher_cost = cost if self.teacher_cost is None else (1 - MOVING) * self.teacher_cost + MOVING * cost

    def saw_student(self, generation_ms: float) -> None:
        cost = local_cost(generation_ms, self.prices)
        with self._lock:
            self.student_cost = cost if self.student_cost is None else (1 - MOVING) * self.student_cost + MOVING * cost

    def disagreed(self, score: float) -> None:
        with self._lock:
            self.threshold = max(self.threshold, score + TIGHTEN)

    def agreed(self) -> None:
        with self._lock:
            if self.threshold != float("inf") and self.calibrated != float("inf"):
                self.threshold -= LOOSEN * (self.threshold - self.calibrated)

    def summary(self) -> dict:
        finite = None if self.threshold == float("inf") else round(self.threshold, 4)
        return {"threshold": finite, "student_cost_usd": self.student_cost, "teacher_cost_usd": self.teacher_cost,
                "teacher_cheaper": self.teacher_cheaper()}
