"""Trace store throughput: batched appends (goal >= 20,000 traces/s) and single-append latency.

    python scripts/bench_store.py [--traces 100000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from distill.store.schema import Trace
from distill.store.traces import TraceStore


def trace(i: int) -> Trace:
    return Trace(query_id=f"q{i}", scope=f"site{i % 20}.com", query=f"How do you use my data, question {i}?",
                 answer="We use your information to provide and improve the service.",
                 citations=[f"site{i % 20}.com/{i % 30:03d}@v1#0"],
                 cited_doc_versions=[{"doc_id": f"site{i % 20}.com/{i % 30:03d}", "version": 1}],
                 retrieved=[f"site{i % 20}.com/{k:03d}@v1#0" for k in range(5)], refused=False, refusal_reason=None,
                 route="rag", route_reason="collect", top_score=0.61, score_margin=0.05, retriever_agreement=0.4,
                 mean_logprob=None, groundedness=1.0, citation_valid=True, latency_ms=9.5, retrieval_ms=4.1,
                 prompt_tokens=0, completion_tokens=0, model="extractive-minilm", backend="extractive",
                 asked_at=datetime(2026, 9, 1, tzinfo=timezone.utc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--single", type=int, default=300)
    args = parser.parse_args()
    traces = [trace(i) for i in range(args.traces + args.single)]
    with tempfile.TemporaryDirectory() as tmp, TraceStore(Path(tmp) / "t.duckdb") as store:
        started = time.perf_counter()
        for start in range(0, args.traces, args.batch):
            store.append(traces[start:start + args.batch])
        elapsed = time.perf_counter() - started
        assert store.count() == args.traces
        singles = []
        for t in traces[args.traces:]:
            begun = time.perf_counter()
            store.append([t])
            singles.append((time.perf_counter() - begun) * 1000)
        singles.sort()
        print(f"batched append: {args.traces} traces in batches of {args.batch}: {args.traces / elapsed:,.0f} traces/s "
              f"(goal >= 20,000)")
        print(f"single append: p50 {statistics.median(singles):.2f} ms, p95 {singles[int(len(singles) * 0.95)]:.2f} ms "
              f"(each its own transaction, into a store of {args.traces:,} traces)")


if __name__ == "__main__":
    main()
