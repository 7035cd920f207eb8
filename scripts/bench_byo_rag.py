"""Bring your own RAG, end to end: distill learns from a team's RAG service and falls back to it.

    python scripts/bench_byo_rag.py [--base-model PATH]

1. Their service (`scripts/their_rag.py`, FastAPI with this project's retriever over the sample
   help center and a word-overlap generator of its own) answers the sample's 80-question log. It
   logs through `TraceLogger` into `bench/byo/distill`, and writes OTLP JSON GenAI spans.
2. The spans are imported into a second workspace (`distill import`). Both paths must give the same
   traces and the same training set.
3. Curate and train on the logged traces (SmolLM2 by default), promote.
4. `distill serve` with `teacher.backend = "http"` pointing at their service, asked every question
   of the sample's gold set. Beside it, the same pipeline on the built-in teacher (ingest, collect,
   curate, train, serve).

Printed, for both: the route and reason of every answer, the share the student served, and F1
against gold of what was answered. Figures go to bench/results/byo_rag.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from distill import registry
from distill.jobs.quickstart import SAMPLE
from distill.learn.curate import curate
from distill.learn.train import train
from distill.metrics import best_f1
from distill.rag.collect import collect
from distill.rag.external import import_file
from distill.rag.index import ingest
from distill.workspace import Workspace

from policyqa import ROOT, save_results

HOME = ROOT / "bench" / "byo"
SOURCES = '[corpus]\nallowed_sources = ["help-center", "policies"]\n'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited with {process.returncode}: {process.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not come up in {seconds} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()  # uvicorn shuts down cleanly: the service's TraceLogger flushes
    process.wait(timeout=60)


def their_service(port: int) -> subprocess.Popen:
    env = {**os.environ, "THEIR_INDEX": str(HOME / "their-rag"), "DISTILL_HOME": str(HOME / "distill"),
           "OTLP_FILE": str(HOME / "spans.json")}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "their_rag:app", "--app-dir", str(ROOT / "scripts"),
                                "--port", str(port), "--log-level", "warning"], env=env, stderr=subprocess.PIPE)
    wait_until_up(f"http://127.0.0.1:{port}/docs", process)
    return process


def trained(workspace: Workspace) -> dict:
    config = workspace.config()
    curation = curate(workspace, config)
    result = train(workspace, config, curation.dataset_path, progress=False)
    registry.promote(workspace.models_dir, config.train.student_name, result.version)
    return {"train": curation.train, "examples": curation.examples, "rejected": dict(curation.decisions.get("reject", {})),
            "version": result.version, "train_seconds": round(result.runtime_s), "steps": result.steps}


def routed(workspace: Workspace, gold: list[dict]) -> dict:
    """`distill serve` on the workspace, asked every gold question: routes, reasons, F1 against gold."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "distill.cli", "serve", "--home", str(workspace.home),
                                "--port", str(port)], stderr=subprocess.PIPE)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process, 300)
        rows = []
        for item in gold:
            response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                                  json={"model": "distill", "messages": [{"role": "user", "content": item["query"]}],
                                        "metadata": {"scope": item.get("scope")}}).json()
            if "distill" not in response:  # an error answer: counted, with its message
                rows.append({"query": item["query"], "route": "error", "reason": response["error"]["message"][:160],
                             "refused": True, "should_refuse": bool(item.get("should_refuse")), "f1": 0.0, "answer": ""})
                continue
            info = response["distill"]
            answer = "" if info["refused"] else response["choices"][0]["message"]["content"]
            rows.append({"query": item["query"], "route": info["route"], "reason": info["reason"],
                         "refused": info["refused"], "should_refuse": bool(item.get("should_refuse")),
                         "f1": float(info["refused"]) if item.get("should_refuse")
                         else (0.0 if info["refused"] else best_f1(answer, item.get("gold_answers") or [])),
                         "answer": answer[:120]})
    finally:
        stop(process)
    reasons = collections.Counter(f"{r['route']}/{r['reason']}" for r in rows)
    return {"questions": len(rows), "served_share": round(sum(r["route"] in ("replay", "student") for r in rows) / len(rows), 3),
            "f1_vs_gold": round(sum(r["f1"] for r in rows) / len(rows), 3), "reasons": dict(reasons.most_common()),
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", default="", help="train.base_model (default: SmolLM2-135M-Instruct)")
    args = parser.parse_args()
    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir(parents=True)
    train_settings = f'[train]\nbase_model = "{args.base_model}"\n' if args.base_model else ""
    queries = [json.loads(line) for line in (SAMPLE / "queries.jsonl").read_text().splitlines() if line.strip()]
    gold = [json.loads(line) for line in (SAMPLE / "gold.jsonl").read_text().splitlines() if line.strip()]
    figures: dict = {}

    their = Workspace(HOME / "their-rag")
    (their.home / "distill.toml").parent.mkdir(parents=True)
    (their.home / "distill.toml").write_text(SOURCES)
    ingest(their, SAMPLE / "corpus.jsonl", their.config())
    port = free_port()
    ours = Workspace(HOME / "distill")
    ours.home.mkdir()
    (ours.home / "distill.toml").write_text(
        f'[teacher]\nbackend = "http"\n[teacher.http]\nurl = "http://127.0.0.1:{port}/answer"\n' + train_settings)

    print(f"1. their service answers {len(queries)} questions, logging through TraceLogger and OTLP spans")
    service = their_service(port)
    began = time.time()
    for q in queries:
        httpx.post(f"http://127.0.0.1:{port}/answer", json={"query": q["query"], "scope": q.get("scope"),
                                                            "timestamp": q.get("timestamp")}, timeout=30)
    figures["their_service_seconds"] = round(time.time() - began, 1)
    stop(service)

    print("2. the spans imported into a second workspace")
    spans = Workspace(HOME / "distill-from-otlp")
    report = import_file(spans, HOME / "spans.json")
    figures["otlp_import"] = {"records": report.records, "imported": report.imported, "bad": len(report.bad)}
    both = [curate(w, w.config()) for w in (ours, spans)]
    figures["logger_vs_otlp_training_sets"] = {"logger": both[0].dataset_hash, "otlp": both[1].dataset_hash,
                                               "same": both[0].dataset_hash == both[1].dataset_hash,
                                               "examples": [b.examples for b in both]}

    print("3. curate and train on their traces")
    figures["byo_training"] = trained(ours)

    print("4. distill serve, falling back to their service; beside it the built-in teacher's pipeline")
    service = their_service(port)
    try:
        figures["byo_routed"] = routed(ours, gold)
    finally:
        stop(service)
    builtin = Workspace(HOME / "builtin")
    builtin.home.mkdir()
    (builtin.home / "distill.toml").write_text(SOURCES + train_settings)
    ingest(builtin, SAMPLE / "corpus.jsonl", builtin.config())
    collect(builtin, builtin.config(), SAMPLE / "queries.jsonl")
    figures["builtin_training"] = trained(builtin)
    figures["builtin_routed"] = routed(builtin, gold)

    for name in ("byo", "builtin"):
        r = figures[f"{name}_routed"]
        print(f"{name}: {r['questions']} gold questions, student served {r['served_share']:.1%}, "
              f"F1 vs gold {r['f1_vs_gold']:.3f}; routes {r['reasons']}")
    same = figures["logger_vs_otlp_training_sets"]
    print(f"TraceLogger and OTLP import give the same training set: {same['same']} ({same['examples']} examples); "
          f"OTLP: {figures['otlp_import']}")
    print(f"figures: {save_results('byo_rag', figures)}")


if __name__ == "__main__":
    main()
