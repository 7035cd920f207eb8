"""Collection throughput: `--engine ray` vs the single-process path, on this machine, same run.

1. Extractive teacher (no LLM): `--queries` PolicyQA queries answered by the local engine, then by
   Ray Data with `collect.ray_workers` actors (Ray's start and the actors' model loading included:
   what a user waits for).
2. An LLM teacher behind an OpenAI-compatible endpoint: `distill serve --model SmolLM2-135M-Instruct`
   started as a real server process, then `--llm-queries` queries collected with the `openai`
   backend: local engine one request at a time (max_concurrency 1), local engine with 8 in flight,
   and Ray with 2 actors x 8 in flight.

Every run answers into a fresh trace store.

    python scripts/bench_ray.py [--queries 2000] [--llm-queries 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from bench_teacher import workspace as policyqa_workspace

from distill.rag.collect import collect
from distill.rag.traffic import make_traffic
from distill.workspace import Workspace

from policyqa import ROOT, require_policyqa, save_results


def run(index_dir: Path, queries_file: Path, limit: int, overrides: dict) -> float:
    home = ROOT / "bench" / "ray-run"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "index").symlink_to(index_dir)
    workspace = Workspace(home)
    config = workspace.config(overrides)
    started = time.perf_counter()
    report = collect(workspace, config, queries_file, limit=limit)
    elapsed = time.perf_counter() - started
    assert report.answered == limit, report
    return report.answered / elapsed


def model_server(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    distill = Path(sys.executable).with_name("distill")
    process = subprocess.Popen([str(distill), "serve", "--model", "SmolLM2-135M-Instruct", "--port", str(port),
                                "--home", str(home)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            if httpx.get(url.removesuffix("/v1") + "/health").status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("distill serve --model did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--llm-queries", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    traffic = make_traffic(require_policyqa(), ROOT / "bench" / "traffic", n_queries=4000, seed=0)
    ws = policyqa_workspace()
    figures = {}
    local = run(ws.index_dir, traffic.queries_file, args.queries, {})
    ray = run(ws.index_dir, traffic.queries_file, args.queries, {"collect": {"engine": "ray"}})
    figures["extractive"] = {"queries": args.queries, "local_qps": local, "ray_qps": ray}
    print(f"extractive teacher, {args.queries} queries: local {local:.1f}/s, ray (2 actors) {ray:.1f}/s, "
          f"ray/local {ray / local:.2f}")
    if args.llm_queries:
        process, url = model_server(ws.home)
        try:
            # a batch of 8 RAG prompts takes tens of seconds on 2 cores: wait for it rather than retry
            teacher = {"backend": "openai", "openai": {"base_url": url, "max_new_tokens": 48, "timeout_s": 600.0}}
            rates = {}
            for name, overrides in (
                    ("local, 1 in flight", {"teacher": {**teacher, "openai": {**teacher["openai"], "max_concurrency": 1}}}),
                    ("local, 8 in flight", {"teacher": teacher}),
                    ("ray, 2 actors x 8 in flight", {"teacher": teacher, "collect": {"engine": "ray"}})):
                rates[name] = run(ws.index_dir, traffic.queries_file, args.llm_queries, overrides)
                print(f"SmolLM2 via distill serve --model, {args.llm_queries} queries, {name}: {rates[name]:.2f}/s")
            base = rates["local, 1 in flight"]
            print("ratios to local, 1 in flight: " + ", ".join(f"{k} {v / base:.2f}" for k, v in rates.items()))
            figures["llm"] = {"queries": args.llm_queries, **rates}
        finally:
            process.terminate()
            process.wait()
    save_results("ray", figures)


if __name__ == "__main__":
    main()
