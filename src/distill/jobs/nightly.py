"""The nightly job, one command for cron: curate -> train -> evaluate -> gate -> promote.

    $ distill nightly
    curate    1,204 traces seen, 177 training examples (run 3f2a...)
    train     v0004: 184 steps in 1,310 s, loss 3.57 -> 0.04
    evaluate  300 held-out queries (the student reading the evidence retrieved now): v0004 f1_vs_teacher 0.981, v0003 0.975
    gate      passed -> promoted v0004

The gate scores what the candidate would serve on the held-out recent window (replay where a
trained wording asks, the open-book student where its fitted threshold lets it, RAG elsewhere;
`_routed_scores`) and promotes it only when that token F1 is within `nightly.teacher_margin` of the
teacher's alone (against the teacher's answers, or against gold when a gold file is given), at most
`nightly.max_regression` below the current version's on the same queries, and, when `eval.suite`
names a regression suite, the candidate routes and answers every pinned case as the suite expects.
Otherwise the current version keeps serving and the run says why. No held-out query means no
evidence, and no promotion.

Every stage writes its figures to the `nightly_runs` table as it finishes, so
`SELECT * FROM nightly_runs ORDER BY started_at DESC` explains any night. Guarantees:

- One run at a time: an exclusive lock on `<home>/nightly.lock`, which the OS releases if the
  process dies, so a crashed run never blocks the next.
- Idempotent per day: a day whose run finished (promoted or kept) is not run again unless forced.
  A run that crashed or was killed is run again; training resumes from its last checkpoint.
- A crash at any stage leaves the current student serving: promotion is the last step and atomic.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable

from distill import registry
from distill.config import Config
from distill.errors import DistillError
from distill.jobs.eval_sets import held_out_queries, load_suite
from distill.jobs.evaluate import run_suite
from distill.learn import open_book
from distill.learn.curate import curate
from distill.learn.train import train
from distill.store.segments import has_traces
from distill.store.traces import TraceStore
from distill.workspace import Workspace

FINISHED = ("promoted", "kept")


@dataclass
class NightlyResult:
    run_id: str
    day: date
    status: str  # promoted, kept, or skipped (this day already ran)
    reason: str
    candidate: str | None = None
    current: str | None = None  # the version serving after the run
    figures: dict = field(default_factory=dict)


def nightly(workspace: Workspace, config: Config, gold: dict[str, list[str]] | None = None, force: bool = False,
            today: date | None = None, say: Callable[[str, str], None] = lambda stage, text: None,
            from_lake: bool = False) -> NightlyResult:
    """Run tonight's job; `say(stage, text)` hears each stage's one-line summary. With `from_lake`,
    curation reads the traces every machine pushed to the lake (see `curate`)."""
    day = today or datetime.now(timezone.utc).date()
    student = config.train.student_name
    with _exclusive(workspace.home / "nightly.lock"):
        if not from_lake and not has_traces(workspace.traces_db):
            raise DistillError(f"no trace store at {workspace.traces_db}; run `distill collect` first")
        with TraceStore(workspace.traces_db) as store:
            earlier = store.nightly_runs(day)
            finished = [r for r in earlier if r["status"] in FINISHED]
            if finished and not force:
                last = finished[-1]
                return NightlyResult(last["run_id"], day, "skipped",
                                     f"already ran on {day} ({last['status']}: {last['reason']}); pass --force to run again",
                                     last["candidate"], registry.current(workspace.models_dir, student), last["figures"])
            for row in earlier:
                if row["status"] == "running":  # its process died: we hold the lock
                    store.finish_nightly(row["run_id"], "failed", "interrupted", row["figures"])
            run_id = uuid.uuid4().hex
            store.start_nightly(run_id, day, registry.current(workspace.models_dir, student))
        run = _Run(workspace, run_id, say)
        try:
            result = _stages(workspace, config, run, gold, from_lake)
        except BaseException as err:
            reason = str(err) if isinstance(err, DistillError) else f"{type(err).__name__}: {err}"
            run.finish("failed", reason)
            raise
        return NightlyResult(run_id, day, result[0], result[1], run.figures.get("train", {}).get("version"),
                             registry.current(workspace.models_dir, student), run.figures)


class _Run:
    """The run's row in `nightly_runs`, updated after every stage."""

    def __init__(self, workspace: Workspace, run_id: str, say: Callable[[str, str], None]):
        self.workspace, self.run_id, self.say, self.figures = workspace, run_id, say, {}
        self.stage_started = time.time()

    def record(self, stage: str, figures: dict, summary: str) -> None:
        self.figures[stage] = {**figures, "seconds": round(time.time() - self.stage_started, 1)}
        self.stage_started = time.time()
        with TraceStore(self.workspace.traces_db) as store:
            store.update_nightly(self.run_id, self.figures)
        self.say(stage, summary)

    def finish(self, status: str, reason: str) -> tuple[str, str]:
        with TraceStore(self.workspace.traces_db) as store:
            store.finish_nightly(self.run_id, status, reason, self.figures)
        self.say("gate" if status != "failed" else "failed", f"{status}: {reason}")
        return status, reason


def _stages(workspace: Workspace, config: Config, run: _Run, gold, from_lake: bool) -> tuple[str, str]:
    cfg, student = config.nightly, config.train.student_name
    curation = curate(workspace, config, from_lake=from_lake)
    run.record("curate", {"run_id": curation.run_id, "traces_seen": curation.traces_seen,
                          "intents": curation.intents, "train": curation.train, "examples": curation.examples,
                          "leaked_eval_traces": curation.leaked_eval_traces, "dataset_hash": curation.dataset_hash},
               f"{curation.traces_seen:,} traces seen, {curation.examples} training examples (run {curation.run_id[:8]})")
    if curation.examples < cfg.min_examples:
        return run.finish("kept", f"only {curation.examples} training examples, nightly.min_examples is "
                                  f"{cfg.min_examples}; collect more traffic or relax the [curate] rules")
    current = registry.current(workspace.models_dir, student)
    current_manifest = registry.manifest(workspace.models_dir, student, current) if current else None
    if current_manifest and current_manifest.get("dataset_hash") == curation.dataset_hash:
        return run.finish("kept", f"the training set is unchanged since {current}; nothing to train")

    trained = train(workspace, config, curation.dataset_path, progress=True)
    run.record("train", {"version": trained.version, "steps": trained.steps, "runtime_s": round(trained.runtime_s, 1),
                         "first_loss": trained.losses[0] if trained.losses else None,
                         "last_loss": trained.losses[-1] if trained.losses else None},
               f"{trained.version}: {trained.steps} steps in {trained.runtime_s:.0f} s"
               + (f", loss {trained.losses[0]:.2f} -> {trained.losses[-1]:.2f}" if trained.losses else ""))

    candidate_manifest = registry.manifest(workspace.models_dir, student, trained.version)
    queries = held_out_queries(workspace, curation.run_id, cfg.max_eval_queries)
    scores = _scores(workspace, config, trained.path, current, queries, gold)
    metric = "f1_vs_gold" if gold and scores[trained.version].get("gold_queries") else "f1_vs_teacher"
    registry.record_eval(workspace.models_dir, student, trained.version,
                         {"curation_run_id": curation.run_id, "metric": metric, **scores[trained.version]})
    where = "(the student reading the evidence retrieved now)" if candidate_manifest.get("student_mode") == "open_book" \
        else "(replay only)"
    run.record("evaluate", {"queries": len(queries), "metric": metric, "scores": scores},
               f"{len(queries)} held-out queries {where}: "
               + ", ".join(f"{v} {metric} {s.get(metric, 0):.3f}" for v, s in scores.items()))

    if not queries:
        return run.finish("kept", f"no held-out traces on the intents {trained.version} covers, so no evidence; "
                                  f"raise curate.eval_days or collect more recent traffic")
    candidate = scores[trained.version][metric]
    teacher = scores[trained.version]["teacher_f1_vs_gold"] if metric == "f1_vs_gold" else 1.0
    if candidate < teacher - cfg.teacher_margin:
        return run.finish("kept", f"{trained.version} {metric} {candidate:.3f} is more than nightly.teacher_margin "
                                  f"{cfg.teacher_margin} below the teacher's {teacher:.3f}")
    if current and current in scores and candidate < scores[current][metric] - cfg.max_regression:
        return run.finish("kept", f"{trained.version} {metric} {candidate:.3f} is below the current {current}'s "
                                  f"{scores[current][metric]:.3f} by more than nightly.max_regression {cfg.max_regression}")
    if config.eval.suite:
        results = _suite(workspace, config, trained)
        failed = [r for r in results if not r["passed"]]
        run.record("suite", {"cases": len(results), "failed": failed},
                   f"regression suite: {len(results) - len(failed)} of {len(results)} cases passed")
        if failed:
            return run.finish("kept", f"{trained.version} failed {len(failed)} of {len(results)} regression suite "
                                      f"cases (eval.suite), first: {failed[0]['query']!r}: {failed[0]['problems']}")
    registry.promote(workspace.models_dir, student, trained.version, reason=f"nightly {run.run_id}")
    return run.finish("promoted", f"{trained.version} {metric} {candidate:.3f} passed the gate"
                                  + (f" (current {current}: {scores[current][metric]:.3f})" if current in scores else ""))


def _scores(workspace: Workspace, config: Config, path: Path, current: str | None, queries: list[dict],
            gold) -> dict:
    """The candidate and the current version on the held-out queries, as each would serve them
    (`_routed_scores`). A version with an open-book student first answers them from the evidence
    retrieved now; the candidate's confidence evidence is written beside it (student_gate.py), so
    the router knows what it may serve. A version that only replays is scored on its replays."""
    import json

    from distill.learn.student import Student
    from distill.learn.student_gate import CONFIDENCE_FILE, fit
    from distill.rag.teacher import Teacher

    if not queries:
        return {path.name: {"queries": 0}}
    versions = {path.name: path}
    if current:
        versions[current] = workspace.models_dir / config.train.student_name / current
    scores, teacher = {}, None
    for version, folder in versions.items():
        manifest = registry.manifest(workspace.models_dir, config.train.student_name, version)
        fitted = {"figures": {}, "rows": []}
        if manifest.get("student_mode") == "open_book":
            teacher = teacher or Teacher.from_workspace(workspace, config)
            student = Student.load(folder, runtime=config.student.runtime, max_new_tokens=config.student.max_new_tokens)
            fitted = fit(student, teacher, queries, config, gold, progress=True)
            if folder == path:
                (path / CONFIDENCE_FILE).write_text(json.dumps(fitted["evidence"], indent=2))
        scores[version] = {"queries": len(queries),
                           **{f"student_{k}" if k.startswith("f1_vs") else k: v for k, v in fitted["figures"].items()},
                           **_routed_scores(manifest, queries, fitted, gold)}
    return scores


def _routed_scores(manifest: dict, queries: list[dict], fitted: dict, gold) -> dict:
    """What the version would serve on each held-out query, scored as the gate's metric: the intent's
    agreed answer where a trained wording asks it (replay), the student's answer where its threshold
    lets it serve, the teacher's otherwise. A weak student is gated by its own threshold (it serves
    nothing), so it does not keep a version's replay from being promoted."""
    from distill.metrics import best_f1, normalize_query, token_f1

    refusal = open_book.REFUSAL
    replay = {(c.get("scope"), normalize_query(w)): c.get("answer") or refusal
              for c in manifest.get("intents", []) for w in c.get("wordings", [])}
    threshold = fitted["figures"].get("threshold")
    student = {(r["scope"], normalize_query(r["query"])): r["answer"] for r in fitted["rows"]
               if r["served"] and threshold is not None and r["score"] is not None and r["score"] >= threshold}
    served, truth, graded, replayed = [], [], [], 0
    for q in queries:
        key = (q["scope"], normalize_query(q["query"]))
        teacher = refusal if q["refused"] else q["answer"]
        answer = replay.get(key) or student.get(key) or teacher
        replayed += key in replay
        served.append(answer)
        truth.append(teacher)
        if gold and q.get("query_id") in gold:
            graded.append((answer, teacher, gold[q["query_id"]]))
    figures = {"replayed": replayed,
               "f1_vs_teacher": round(sum(token_f1(a, t) for a, t in zip(served, truth)) / len(queries), 4)}
    if graded:
        figures.update(gold_queries=len(graded),
                       f1_vs_gold=round(sum(best_f1(a, g) for a, _, g in graded) / len(graded), 4),
                       teacher_f1_vs_gold=round(sum(best_f1(t, g) for _, t, g in graded) / len(graded), 4))
    return figures


def _suite(workspace: Workspace, config: Config, trained) -> list[dict]:
    """The regression suite routed with the candidate as the student (nothing logged)."""
    from distill.learn.student import load_version
    from distill.rag.teacher import Teacher
    from distill.serve.router import Router

    cases = load_suite(workspace.home / config.eval.suite)
    candidate = load_version(trained.path, config.student.runtime, config.student.max_new_tokens)
    with Router(Teacher.from_workspace(workspace, config), config, candidate, trained.version) as router:
        return run_suite(router, cases, config.eval.success_f1)


@contextmanager
def _exclusive(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DistillError(f"another nightly run holds {path} (pid {holder}); wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
