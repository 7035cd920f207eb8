"""Replay the held-out recent window of the PolicyQA traffic through the router.

    python scripts/bench_replay.py [--max-queries 400]

Needs `scripts/bench_curate.py` (traffic, traces) and a promoted version there (`distill nightly --home bench/policyqa`).
Every held-out query of the latest curation run (the last `curate.eval_days`, never trained on) is
answered by the router; the figures: share of traffic served by the student, the reasons the rest
went to RAG, token F1 against gold of the routed answers next to the teacher-only answers for the
same queries (the teacher's stored traces), and student-served answers that were high-risk.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

from distill.rag.corpus import first_match
from distill.serve.router import Router
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from policyqa import ROOT, best_f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-queries", type=int, default=400, help="held-out traces replayed (most recent first)")
    args = parser.parse_args()
    workspace = Workspace(ROOT / "bench" / "curate-policyqa")
    gold = {g["query_id"]: g["gold_answers"] for g in
            map(json.loads, (ROOT / "bench" / "traffic" / "gold.jsonl").read_text().splitlines())}
    with TraceStore(workspace.traces_db) as store:
        rows = store.sql("""
            SELECT t.query_id, t.scope, t.query, t.answer FROM curation c JOIN traces t USING (trace_id)
            WHERE c.run_id = (SELECT run_id FROM curation_runs ORDER BY created_at DESC LIMIT 1)
              AND t.asked_at >= (SELECT cutoff FROM curation_runs ORDER BY created_at DESC LIMIT 1)
            ORDER BY t.asked_at DESC LIMIT ?""", [args.max_queries])
    config = workspace.config()
    with Router.from_workspace(workspace, config, log=False) as router:
        print(f"student {router.version}; replaying {len(rows)} held-out traces")
        routed = [router.answer(r["query"], r["scope"]) for r in rows]
    served = [r.route in ("replay", "student") for r in routed]
    routed_f1 = [best_f1(a.answer, gold[r["query_id"]]) for a, r in zip(routed, rows)]
    teacher_f1 = [best_f1(r["answer"], gold[r["query_id"]]) for r in rows]
    reasons = Counter(a.reason for a in routed)
    print(f"  served by the student: {np.mean(served):.1%} of the held-out traffic (goal for the headline: >= 60 %)")
    print(f"  reasons: {dict(reasons.most_common())}")
    print(f"  F1 vs gold: routed {np.mean(routed_f1):.3f}, teacher only {np.mean(teacher_f1):.3f} "
          f"(ratio {np.mean(routed_f1) / np.mean(teacher_f1):.3f}; goal >= 0.98)")
    on_student = [(f, t) for f, t, s in zip(routed_f1, teacher_f1, served) if s]
    if on_student:
        print(f"  on the student-served queries: student {np.mean([f for f, _ in on_student]):.3f}, "
              f"teacher {np.mean([t for _, t in on_student]):.3f}")
    risky = [a for a in routed if a.route in ("replay", "student") and first_match(a.query, router.risk)]
    print(f"  high-risk questions served by the student: {len(risky)} (goal 0)")
    latency = [a.latency_ms for a in routed]
    print(f"  latency p50 {np.median(latency):.0f} ms, p95 {np.percentile(latency, 95):.0f} ms")


if __name__ == "__main__":
    main()
