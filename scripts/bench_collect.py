"""Collection throughput on PolicyQA traffic: queries/s through `collect` (goal >= 100 batched with
the extractive teacher), and the SmolLM2 teacher's rate and latency, which set what a student saves.

    python scripts/bench_collect.py [--queries 2000] [--smollm2 20]

Each run answers into a fresh trace store, so every query is really answered (no resume skips).
"""

from __future__ import annotations

import argparse
import shutil
import time

from bench_teacher import workspace as policyqa_workspace

from distill.rag.collect import collect
from distill.rag.teacher import Teacher
from distill.rag.traffic import make_traffic
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from policyqa import ROOT, require_policyqa


def run(teacher: Teacher, queries_file, limit: int, batch_size: int) -> tuple[float, dict]:
    home = ROOT / "bench" / "collect-run"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "index").symlink_to(teacher.retriever.workspace.index_dir)
    workspace = Workspace(home)
    config = workspace.config({"collect": {"commit_every": batch_size}})
    started = time.perf_counter()
    report = collect(workspace, config, queries_file, limit=limit, teacher=teacher)
    elapsed = time.perf_counter() - started
    with TraceStore(workspace.traces_db) as store:
        stats = store.sql("SELECT count(*) AS n, median(latency_ms) AS p50, quantile_cont(latency_ms, 0.95) AS p95, "
                          "avg(prompt_tokens) AS prompt, avg(completion_tokens) AS completion FROM traces")[0]
    assert report.answered == limit == stats["n"]
    return report.answered / elapsed, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=4000)
    parser.add_argument("--smollm2", type=int, default=20, help="queries for the SmolLM2 teacher (0: skip)")
    args = parser.parse_args()
    traffic = make_traffic(require_policyqa(), ROOT / "bench" / "traffic", n_queries=4000, seed=0)
    ws = policyqa_workspace()
    rows = []
    extractive = Teacher.from_workspace(ws, ws.config())
    rows.append(("extractive, batch 64", *run(extractive, traffic.queries_file, args.queries, 64)))
    if args.smollm2:
        smol = Teacher.from_workspace(ws, ws.config({"teacher": {"backend": "transformers"}}))
        rows.append(("SmolLM2-135M (transformers)", *run(smol, traffic.queries_file, args.smollm2, 1)))
    print(f"{'teacher':30} {'queries/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'prompt tok':>10} {'compl tok':>9}")
    for name, rate, s in rows:
        print(f"{name:30} {rate:10.1f} {s['p50']:8.1f} {s['p95']:8.1f} {s['prompt']:10.0f} {s['completion']:9.1f}")


if __name__ == "__main__":
    main()
