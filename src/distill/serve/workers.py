"""What runs beside the router's requests: the student's batcher (concurrent questions share
one generate call), the shadow checker (RAG re-answers a share of served questions off the
request path, and the result moves the thresholds), and the swap lock that lets a reload
replace the corpus or the student between requests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import queue
import threading
import time
from datetime import datetime, timezone

from distill.learn.coverage import agrees
from distill.metrics import token_f1
from distill.rag.corpus import cited_document
from distill.store.writer import TraceWriter, take_batch

logger = logging.getLogger(__name__)

SHADOW_FIELDS = ("trace_id", "student_version", "intent_id", "scope", "query", "student_answer", "teacher_answer",
                 "agreement", "route")  # a shadow check as the store keeps it


class StudentBatcher:
    """Concurrent student questions answered together: the first waiting question opens a batch,
    which takes whatever else arrives within `wait_s` (up to `size`), in one `generate` call. On a
    CPU a batch of 8 costs little more than one answer, so a busy service serves several times more."""

    def __init__(self, student, size: int, wait_s: float, max_time: float):
        self.student, self.size, self.wait_s, self.max_time = student, size, wait_s, max_time
        self.pending = 0  # questions queued or being generated
        self.batch_s: float | None = None  # moving average of one batch's wall time
        self._count = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="distill-student", daemon=True)
        self._thread.start()

    def expected_wait_s(self) -> float:
        """How long a question asked now would wait for its answer: the batches ahead of it and its own."""
        return 0.0 if self.batch_s is None else math.ceil((self.pending + 1) / self.size) * self.batch_s

    def answer(self, *item):
        """The Generation for one item of `student.answer_batch` (a student's (query, scope), a chat
        model's (messages, max_tokens, stop)); raises what generating raised."""
        done = concurrent.futures.Future()
        with self._count:
            self.pending += 1
        self._queue.put((item, done))
        try:
            return done.result()
        finally:
            with self._count:
                self.pending -= 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, stopping = take_batch(self._queue, first, self.size, self.wait_s)
            began = time.perf_counter()
            try:
                generations = self.student.answer_batch([item for item, _ in batch], max_time=self.max_time)
                took = time.perf_counter() - began
                self.batch_s = took if self.batch_s is None else 0.7 * self.batch_s + 0.3 * took
                for (_, done), generation in zip(batch, generations):
                    done.set_result(generation)
            except Exception as err:
                for _, done in batch:
                    done.set_exception(err)
            if stopping:
                break


class ShadowChecker:
    """Off the request path: answer with RAG a question replay or the student answered (or, in
    shadow mode, take RAG's answer and what replay would have answered), store the agreement, and
    withdraw intents whose agreement stays low."""

    def __init__(self, router, writer: TraceWriter | None):  # router: the serve.router.Router it checks for
        self.router, self.writer = router, writer
        self.evidence: dict[tuple, list[dict]] = {}  # (student version, intent_id) -> its shadow checks so far
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="distill-shadow", daemon=True)
        self._thread.start()

    def submit(self, job: dict) -> None:
        self._queue.put(job)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._check(job)
            except Exception:  # a failed check must never take the router down
                logger.exception("shadow check failed")

    def _check(self, job: dict) -> None:
        with self.router._swap.reading():
            if job["student_version"] == self.router.version:  # else the student it checked was swapped out
                self._compare(job)

    def _compare(self, job: dict) -> None:
        router, cfg = self.router, self.router.config.router
        if job.get("teacher_answer") is None:
            with router._teacher_lock:
                answer = router.teacher.answer(job["query"], job["scope"])
            job["teacher_answer"], job["teacher_doc"] = answer.answer, cited_document(answer.citations)
        job["agreement"] = round(token_f1(job["student_answer"], job["teacher_answer"]), 4)
        if self.writer:
            self.writer.put("shadow_check", {**{k: job.get(k) for k in SHADOW_FIELDS},
                                             "checked_at": datetime.now(timezone.utc)})
        if job.get("intent_id") is None:  # the open-book student: its confidence threshold learns
            student = {"doc": job.get("student_doc"), "answer": job["student_answer"], "refused": False}
            teacher = {"doc": job.get("teacher_doc"), "answer": job["teacher_answer"], "refused": not job["teacher_answer"]}
            if agrees(student, teacher, router.decision.success_f1):
                router.gate.agreed()
            else:
                router.gate.disagreed(job["score"])
            return
        checks = self.evidence.setdefault((job["student_version"], job["intent_id"]), [])
        checks.append({k: job[k] for k in ("trace_id", "query", "student_answer", "teacher_answer", "agreement")})
        if not self._learn(job):
            mean = sum(c["agreement"] for c in checks) / len(checks)
            if len(checks) >= cfg.withdraw_min_samples and mean < cfg.withdraw_below:
                self._withdraw(job["intent_id"], checks, mean, f"shadow agreement {mean:.2f} over {len(checks)} checks")

    def _learn(self, job: dict) -> bool:
        """Tighten the intent's decision at once on a disagreement, loosen it slowly on an agreement;
        a disagreement on a trained wording withdraws the intent (its own answer is wrong), and
        then this says True."""
        decision = self.router.decision
        intent = decision.intents.get(job["intent_id"], {})
        student = {"doc": intent.get("doc"), "answer": job["student_answer"], "refused": False}
        teacher = {"doc": job.get("teacher_doc"), "answer": job["teacher_answer"], "refused": not job["teacher_answer"]}
        if agrees(student, teacher, decision.success_f1):
            decision.agreed(job["intent_id"])
        elif job.get("seen"):
            self._withdraw(job["intent_id"], self.evidence[(job["student_version"], job["intent_id"])][-1:], job["agreement"],
                           f"RAG disagreed on a trained wording ({job['query']!r})")
            return True
        else:
            decision.disagreed(job["intent_id"], job["score"])
        return False

    def _withdraw(self, intent_id: str, checks: list[dict], agreement: float, why: str) -> None:
        router = self.router
        if intent_id in router.withdrawn:
            return
        router.withdrawn.add(intent_id)
        logger.warning("withdrew intent %s from student %s: %s", intent_id, router.version, why)
        if self.writer:
            self.writer.put("withdrawal", {"student_version": router.version, "intent_id": intent_id,
                                           "samples": len(checks), "agreement": round(agreement, 4), "evidence": checks,
                                           "withdrawn_at": datetime.now(timezone.utc)})


class SwapLock:
    """Requests read the router's state all at once; a reload swaps it between them. A waiting swap
    lets no new request start (so a busy service cannot starve it), waits for those in flight,
    swaps and lets the rest go on: no request sees half of one state and half of the next."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = self._waiting = 0
        self._writing = False

    @contextlib.contextmanager
    def reading(self):
        with self._cond:
            while self._writing or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self):
        with self._cond:
            self._waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
