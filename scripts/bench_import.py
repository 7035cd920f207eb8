"""How fast does `distill import` take another RAG system's traces, and does memory stay flat?

    python scripts/bench_import.py [--n 200000]

Writes two JSON lines files of records in the documented form (each with three contexts of about
60 words, an answer quoted from the first, no citations given so they are found by overlap), of
n/4 and n records, then imports each into a fresh workspace in a child process and prints the
traces a second and the child's peak RSS (and its largest parsing worker's). Flat memory: the larger file's peak is about the smaller
one's. A rerun of the larger import (every id already stored) is timed too. Figures go to
bench/results/import.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from policyqa import ROOT, save_results

HOME = ROOT / "bench" / "import"
WORDS = ("account billing refund invoice export notebook offline sync password reset plan storage limit share "
         "editor viewer trash restore delete payment card declined renewal monthly yearly support hours").split()

CHILD = """
import json, resource, sys, time
from distill.workspace import Workspace
from distill.rag.external import import_file
began = time.perf_counter()
report = import_file(Workspace.resolve(sys.argv[1]), sys.argv[2])
seconds = time.perf_counter() - began
print(json.dumps({"records": report.records, "imported": report.imported, "already_stored": report.already_stored,
                  "bad": len(report.bad), "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def write_records(path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    start = datetime(2026, 10, 1, tzinfo=timezone.utc)
    documents = [" ".join(rng.choice(WORDS) for _ in range(60)) + "." for _ in range(500)]
    with path.open("w") as out:
        for i in range(n):
            picked = rng.sample(range(len(documents)), 3)
            contexts = [{"id": f"doc-{d}#0", "doc_id": f"doc-{d}", "text": documents[d]} for d in picked]
            first = documents[picked[0]].split()
            at = rng.randrange(0, 40)
            out.write(json.dumps({"id": f"r-{i}", "query": f"how do I {' '.join(rng.sample(WORDS, 4))}?",
                                  "scope": "help", "timestamp": (start + timedelta(seconds=i * 7)).isoformat(),
                                  "answer": " ".join(first[at:at + 18]), "contexts": contexts, "model": "their-llm",
                                  "prompt_tokens": 380, "completion_tokens": 24, "latency_ms": 900}) + "\n")


def run_import(workspace, path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(workspace), str(path)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="records in the larger file")
    args = parser.parse_args()
    HOME.mkdir(parents=True, exist_ok=True)
    figures = {}
    for name, n in (("small", args.n // 4), ("large", args.n)):
        path = HOME / f"{name}.jsonl"
        if not path.exists() or sum(1 for _ in path.open()) != n:
            write_records(path, n)
        workspace = HOME / f"ws-{name}"
        shutil.rmtree(workspace, ignore_errors=True)
        result = run_import(workspace, path)
        result["traces_per_s"] = round(result["imported"] / result["seconds"])
        result["file_mb"] = round(path.stat().st_size / 2**20, 1)
        figures[name] = result
        print(f"{name}: {n:,} records ({result['file_mb']} MB): {result['traces_per_s']:,} traces/s, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB (largest parsing worker {result['worker_peak_rss_mb']:.0f} MB)")
        if name == "large":
            rerun = run_import(workspace, path)
            figures["large_rerun"] = rerun
            print(f"rerun of the large file: {rerun['imported']} imported, {rerun['already_stored']:,} already stored "
                  f"in {rerun['seconds']:.1f} s")
    print(f"goal 20,000 traces/s: {figures['large']['traces_per_s']:,}; memory flat: peak RSS "
          f"{figures['small']['peak_rss_mb']:.0f} MB for {args.n // 4:,}, {figures['large']['peak_rss_mb']:.0f} MB for {args.n:,}")
    print(f"figures: {save_results('import', figures)}")


if __name__ == "__main__":
    main()
