"""Load test of `distill serve` on loopback: N concurrent OpenAI clients for a fixed time.

    python scripts/bench_serve.py [--home bench/curate-policyqa] [--clients 32] [--seconds 60]

Starts `distill serve` on the workspace (its promoted student, if any, and the RAG teacher), replays
PolicyQA traffic questions from the workspace's query log through httpx async clients, then stops
the server with SIGTERM and counts the traces it wrote. Prints requests/s, p50/p95 latency, errors
by status, the routes taken, and whether every answered request is a trace after shutdown (goal: 0
errors, all present).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from distill.store.traces import TraceStore
from distill.workspace import Workspace

from policyqa import ROOT, save_results

PORT = 18080


async def client(queue: list[dict], deadline: float, results: list, http: httpx.AsyncClient) -> None:
    while time.perf_counter() < deadline and queue:
        item = queue.pop()
        began = time.perf_counter()
        try:
            response = await http.post("/v1/chat/completions", json={
                "model": "distill", "messages": [{"role": "user", "content": item["query"]}],
                "metadata": {"scope": item.get("scope")}})
            route = f"{response.headers.get('x-distill-route', '-')}/{response.headers.get('x-distill-reason', '-')}"
            results.append((response.status_code, (time.perf_counter() - began) * 1000, route))
        except httpx.HTTPError as err:
            results.append((type(err).__name__, (time.perf_counter() - began) * 1000, "-"))


async def load(queries: list[dict], clients: int, seconds: float) -> list:
    results: list = []
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=120) as http:
        await asyncio.gather(*(client(queries, deadline, results, http) for _ in range(clients)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=ROOT / "bench" / "curate-policyqa")
    parser.add_argument("--queries", type=Path, default=ROOT / "bench" / "traffic" / "queries.jsonl")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    workspace = Workspace(args.home)
    with TraceStore(workspace.traces_db) as store:
        before = store.count()
    queries = [json.loads(line) for line in args.queries.read_text().splitlines()][::-1]
    server = subprocess.Popen([sys.executable, "-m", "distill.cli", "serve", "--home", str(args.home),
                               "--port", str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "DISTILL_API_KEY": ""})
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit("the server did not start: " + server.stderr.read()[-2000:])
        results = asyncio.run(load(queries, args.clients, args.seconds))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    with TraceStore(workspace.traces_db) as store:
        logged = store.count() - before
    latencies = [ms for status, ms, _ in results if status == 200]
    statuses = Counter(status for status, _, _ in results)
    routes = Counter(route for status, _, route in results if status == 200)
    print(f"{args.clients} clients for {args.seconds:.0f} s: {len(results)} requests, "
          f"{len(latencies) / args.seconds:.1f} answered/s; latency p50 {statistics.median(latencies):.0f} ms, "
          f"p95 {np.percentile(latencies, 95):.0f} ms")
    print(f"  statuses {dict(statuses)} (goal: only 200); route/reason {dict(routes.most_common())}")
    print(f"  traces written after shutdown: {logged} of {len(latencies)} answered (goal: all)")
    save_results("serve", {"clients": args.clients, "seconds": args.seconds, "requests": len(results),
                           "answered_per_s": round(len(latencies) / args.seconds, 2),
                           "p50_ms": round(statistics.median(latencies)), "p95_ms": round(float(np.percentile(latencies, 95))),
                           "errors": len(results) - statuses.get(200, 0), "routes": dict(routes),
                           "traces_logged": logged, "answered": len(latencies)})


if __name__ == "__main__":
    main()
