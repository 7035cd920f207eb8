"""Teacher answer quality on PolicyQA dev (report half): token F1 and exact match against gold, and
citation correctness (the cited chunk contains a gold answer span), per backend.

    python scripts/bench_teacher.py                       # extractive on every report-half pair
    python scripts/bench_teacher.py --smollm2 40          # plus SmolLM2-135M on the first 40 pairs
    python scripts/bench_teacher.py --half tune           # where settings are chosen
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from distill.rag.index import ingest
from distill.rag.teacher import Teacher
from distill.workspace import Workspace

from policyqa import ROOT, best_f1, exact_match, normalize, require_policyqa, split_pairs


def workspace() -> Workspace:
    ws = Workspace(ROOT / "bench" / "policyqa-default")
    if not (ws.index_dir / "dense.faiss").exists():
        ingest(ws, require_policyqa(), ws.config(), fmt="squad")
    return ws


def measure(teacher: Teacher, pairs: list[dict], batch: int) -> dict:
    f1s, ems, cited_ok, latencies, refused = [], [], [], [], 0
    chunks = {c["chunk_id"]: c for c in teacher.retriever.chunks}
    for start in range(0, len(pairs), batch):
        group = pairs[start:start + batch]
        for pair, answer in zip(group, teacher.answer_batch([(p["query"], p["scope"]) for p in group])):
            f1s.append(best_f1(answer.answer, pair["gold_answers"]))
            ems.append(exact_match(answer.answer, pair["gold_answers"]))
            latencies.append(answer.latency_ms)
            if answer.refused:
                refused += 1
                continue
            cited = " ".join(normalize(chunks[c]["text"]) for c in answer.citations)
            cited_ok.append(any(normalize(g) in cited for g in pair["gold_answers"]))
    return {"pairs": len(pairs), "f1": float(np.mean(f1s)), "em": float(np.mean(ems)),
            "citation_correct": float(np.mean(cited_ok)) if cited_ok else 0.0, "refused": refused / len(pairs),
            "p50_ms": statistics.median(latencies), "p95_ms": float(np.percentile(latencies, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half", default="report", choices=["tune", "report"])
    parser.add_argument("--smollm2", type=int, default=0, help="also run SmolLM2-135M-Instruct on this many pairs")
    parser.add_argument("--limit", type=int, default=0, help="extractive on at most this many pairs (0: all)")
    args = parser.parse_args()
    pairs = split_pairs()[args.half]
    ws = workspace()
    rows = []
    extractive = Teacher.from_workspace(ws, ws.config())
    rows.append(("extractive", measure(extractive, pairs[: args.limit or None], batch=64)))
    if args.smollm2:
        smol = Teacher.from_workspace(ws, ws.config({"teacher": {"backend": "transformers"}}))
        rows.append(("SmolLM2-135M (transformers)", measure(smol, pairs[: args.smollm2], batch=1)))
        rows.append(("extractive, same pairs", measure(extractive, pairs[: args.smollm2], batch=1)))
    print(f"PolicyQA dev, {args.half} half (distinct website-question pairs; gold = every answering span)")
    print(f"{'backend':30} {'pairs':>5} {'F1':>6} {'EM':>6} {'cite ok':>8} {'refused':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for name, m in rows:
        print(f"{name:30} {m['pairs']:5d} {m['f1']:6.3f} {m['em']:6.3f} {m['citation_correct']:8.3f} "
              f"{m['refused']:8.3f} {m['p50_ms']:8.1f} {m['p95_ms']:8.1f}")


if __name__ == "__main__":
    main()
