"""Student vs teacher on PolicyQA traffic: train the default student on the curated set, then
compare on the held-out recent window, on the intents the student covers.

    python scripts/bench_student.py [--max-eval 80] [--teacher-latency 20]

Needs `scripts/bench_curate.py` to have collected and curated the traffic first (it does both).
Reports training wall time and peak memory, token F1 of student answers against the teacher's and
against gold, the teacher's own F1 against gold on the same queries, and latency p50/p95 of the
student next to the SmolLM2 RAG teacher measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np

from distill.config import Workspace
from distill.student import Student
from distill.store import TraceStore
from distill.teacher import Teacher
from distill.train import train
from policyqa import ROOT, best_f1, token_f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-eval", type=int, default=80, help="distinct covered eval queries to answer")
    parser.add_argument("--teacher-latency", type=int, default=20, help="SmolLM2 teacher answers timed alongside")
    args = parser.parse_args()
    workspace = Workspace(ROOT / "bench" / "curate-policyqa")
    if not workspace.traces_db.exists():
        raise SystemExit("run scripts/bench_curate.py first: it collects and curates the PolicyQA traffic")
    gold = {g["query_id"]: g for g in map(json.loads, (ROOT / "bench" / "traffic" / "gold.jsonl").read_text().splitlines())}
    config = workspace.config()
    started = time.time()
    result = train(workspace, config)
    train_s = time.time() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"trained {result.version}: {result.examples} examples, {result.steps} steps, {train_s:.0f} s wall "
          f"(goal: nightly <= 30 min), peak RSS {peak_mb:.0f} MB; loss {result.losses[0]:.2f} -> {result.losses[-1]:.2f}")
    with TraceStore(workspace.traces_db) as store:
        rows = store.sql("""
            SELECT t.query_id, t.scope, t.query, t.answer FROM curation c JOIN traces t USING (trace_id)
            JOIN clusters k ON k.run_id = c.run_id AND k.cluster_id = c.cluster_id
            WHERE c.run_id = (SELECT run_id FROM curation_runs ORDER BY created_at DESC LIMIT 1)
              AND c.decision = 'eval' AND k.trained AND NOT t.refused ORDER BY t.asked_at""")
    distinct = list({(r["scope"], r["query"]): r for r in rows}.values())[: args.max_eval]
    student = Student.load(result.path)
    vs_teacher, vs_gold, teacher_gold, student_ms = [], [], [], []
    for row in distinct:
        begun = time.perf_counter()
        answer = student.answer(row["query"], row["scope"]).text
        student_ms.append((time.perf_counter() - begun) * 1000)
        golds = gold[row["query_id"]]["gold_answers"]
        vs_teacher.append(token_f1(answer, row["answer"]))
        vs_gold.append(best_f1(answer, golds))
        teacher_gold.append(best_f1(row["answer"], golds))
    print(f"held-out window, covered intents: {len(rows)} traces, {len(distinct)} distinct queries answered")
    print(f"  student vs teacher token F1 {np.mean(vs_teacher):.3f} (goal >= 0.80)")
    print(f"  student vs gold {np.mean(vs_gold):.3f}, teacher (extractive) vs gold {np.mean(teacher_gold):.3f} "
          f"(goal: within 0.02)")
    smol = Teacher.from_workspace(workspace, workspace.config({"teacher": {"backend": "transformers"}}))
    teacher_ms = []
    for row in distinct[: args.teacher_latency]:
        begun = time.perf_counter()
        smol.answer(row["query"], row["scope"])
        teacher_ms.append((time.perf_counter() - begun) * 1000)
    s50, t50 = statistics.median(student_ms), statistics.median(teacher_ms)
    print(f"  latency p50/p95: student {s50:.0f} / {np.percentile(student_ms, 95):.0f} ms, SmolLM2 RAG teacher "
          f"{t50:.0f} / {np.percentile(teacher_ms, 95):.0f} ms (same run); ratio {s50 / t50:.2f} (goal <= 0.33)")


if __name__ == "__main__":
    main()
