"""A live soak: a running service beside ingest, collect, nightly and sql on one workspace.

    python scripts/bench_live.py [--clients 32] [--seconds 120] [--workers 2]

Setup (bench/live, rebuilt unless --reuse): version 1 of the COVID FAQ
(../shared/datasets/covid_faq_versions) ingested, traffic over `--questions` of its questions
(half of them change in version 2) collected with the extractive teacher, curated, a SmolLM2
student trained and promoted (the medical FAQ runs with `curate.high_risk_patterns = []`, as
scripts/bench_router.py does).

Soak: `distill serve --workers N` on loopback, `--clients` threads asking the traffic's wordings
without pause for `--seconds` (and until the commands are done), while in the same minutes:
`distill ingest` adds version 2 of the FAQ, `distill collect` appends a new query log, `distill
nightly --force` curates, trains and gates a new student, and `distill sql` counts traces every
3 s. Then the service is stopped (SIGINT) and the store read.

With `--kill` the service is ended by kill -9 of its process group while the clients ask, and the
answered requests whose traces did not survive are counted.

Printed (and saved to bench/results/live.json): requests and failed requests; each command's exit
status and duration; requests answered vs traces in the store after shutdown; how long after the
ingest finished the service answered from the new corpus generation; student answers that cite a
superseded document version once the new generation answers (goal 0); latency p50/p95 by route.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np
from bench_router import FAQ, phrasings, traffic

from distill import registry
from distill.learn.curate import curate
from distill.learn.train import train
from distill.rag.collect import collect
from distill.rag.index import corpus_path, ingest
from distill.store.chunks import CorpusSnapshot
from distill.store.segments import finished_segments, segment_folder
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from policyqa import ROOT, save_results

HOME = ROOT / "bench" / "live"
SETTINGS = "[curate]\nhigh_risk_patterns = []\n[train]\nepochs = {epochs}\n[nightly]\nmin_examples = 5\n"


def setup(questions: int, epochs: float) -> tuple[Workspace, list[str]]:
    """The workspace with a promoted student, and the wordings clients will ask."""
    rows = [json.loads(line) for line in FAQ.read_text().splitlines()]
    rng = random.Random(0)
    chosen = rng.sample([r for r in rows if r["changed"]], questions // 2) + \
        rng.sample([r for r in rows if not r["changed"]], questions - questions // 2)
    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir(parents=True)
    (HOME / "distill.toml").write_text(SETTINGS.format(epochs=epochs))
    workspace = Workspace(HOME)
    config = workspace.config()
    started = time.time()
    ingest(workspace, FAQ, config, fmt="faq-versions", version=1)
    traffic(chosen, HOME / "queries.jsonl")
    collect(workspace, config, HOME / "queries.jsonl")
    curation = curate(workspace, config)
    trained = train(workspace, config, curation.dataset_path, progress=True)
    registry.promote(workspace.models_dir, config.train.student_name, trained.version)
    (HOME / "wordings.json").write_text(json.dumps([w for r in chosen for w in phrasings(r)]))
    print(f"setup: {len(chosen)} questions, {curation.examples} examples, {trained.version} promoted "
          f"({time.time() - started:.0f} s)")
    return workspace, json.loads((HOME / "wordings.json").read_text())


def new_query_log(wordings: list[str], path) -> None:
    """The week after the setup's traffic (which `bench_router.traffic` spreads over 28 days from
    2020-05-01), as a query log `distill collect` appends: it becomes the nightly's held-out week."""
    start = datetime(2020, 5, 29, tzinfo=timezone.utc)
    lines = [{"query": w, "query_id": f"live-{i}", "timestamp": (start + timedelta(hours=i % 160)).isoformat()}
             for i, w in enumerate(wordings)]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def run_command(args: list[str], log: list[dict]) -> None:
    began = time.time()
    done = subprocess.run([sys.executable, "-m", "distill.cli", *args, "--home", str(HOME)],
                          capture_output=True, text=True)
    log.append({"command": " ".join(args[:1]), "rc": done.returncode, "started": began,
                "seconds": round(time.time() - began, 1),
                "error": done.stderr.strip().splitlines()[-1] if done.returncode else None})
    print(f"  {args[0]}: exit {done.returncode} in {time.time() - began:.0f} s"
          + (f" ({log[-1]['error']})" if done.returncode else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--questions", type=int, default=40, help="FAQ questions in the traffic (half change in v2)")
    parser.add_argument("--epochs", type=float, default=2.0, help="student training epochs (setup and nightly)")
    parser.add_argument("--reuse", action="store_true", help="reuse bench/live as the last run left it")
    parser.add_argument("--kill", action="store_true",
                        help="end with kill -9 of the service's processes instead of a graceful stop, and count the "
                             "answered requests whose traces were lost")
    args = parser.parse_args()
    if not FAQ.exists():
        raise SystemExit(f"{FAQ} not found: this benchmark needs ../shared/datasets/covid_faq_versions")
    if args.reuse:
        workspace, wordings = Workspace(HOME), json.loads((HOME / "wordings.json").read_text())
    else:
        workspace, wordings = setup(args.questions, args.epochs)
    with TraceStore(workspace.traces_db) as store:
        traces_before = store.count()
    new_query_log(wordings, HOME / "today.jsonl")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "distill.cli", "serve", "--workers", str(args.workers),
                               "--port", str(port), "--home", str(HOME)], stdout=subprocess.DEVNULL,
                              stderr=open(HOME / "serve.log", "w"), start_new_session=True)
    workers: set[int] = set()
    deadline = time.time() + 300
    while len(workers) < args.workers and time.time() < deadline:
        try:
            workers.add(httpx.get(f"{base}/health", timeout=5).json()["worker"])
        except httpx.HTTPError:
            time.sleep(0.5)
    print(f"serving with {len(workers)} workers on {base}; {args.clients} clients for {args.seconds:.0f} s")

    results: list[dict] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                question = rng.choice(wordings)
                began = time.time()
                try:
                    response = http.post(f"{base}/v1/chat/completions",
                                         json={"model": "distill", "messages": [{"role": "user", "content": question}]})
                    body = response.json() if response.status_code == 200 else {}
                    results.append({"at": began, "status": response.status_code, "seconds": time.time() - began,
                                    **{k: body.get("distill", {}).get(k) for k in
                                       ("route", "reason", "citations", "corpus_generation", "student_version")}})
                except httpx.HTTPError as err:
                    results.append({"at": began, "status": type(err).__name__, "seconds": time.time() - began})

    commands: list[dict] = []
    nightly_outcome: dict = {}

    def jobs() -> None:
        time.sleep(10)
        run_command(["ingest", str(FAQ), "--format", "faq-versions", "--version", "2"], commands)
        run_command(["collect", str(HOME / "today.jsonl")], commands)
        run_command(["nightly", "--force"], commands)
        with TraceStore(workspace.traces_db) as store:
            (night,) = store.sql("SELECT status, reason, candidate FROM nightly_runs ORDER BY started_at DESC LIMIT 1")
        print(f"  nightly: {night['status']}: {night['reason']}", flush=True)
        nightly_outcome.update(night)
        if night["status"] != "promoted" and night["candidate"]:  # the gate kept it: promote by hand, a live swap either way
            run_command(["models", "promote", night["candidate"]], commands)

    def counts() -> None:
        while not stop.is_set():
            run_command(["sql", "SELECT count(*) FROM traces"], commands)
            stop.wait(3)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    job_thread, sql_thread = threading.Thread(target=jobs), threading.Thread(target=counts)
    soak_started = time.time()
    for thread in threads + [job_thread, sql_thread]:
        thread.start()
    time.sleep(args.seconds)
    job_thread.join()  # the soak lasts until the commands are done
    if args.kill:  # mid-load: the clients are still asking
        os.killpg(server.pid, signal.SIGKILL)
    stop.set()
    for thread in threads + [sql_thread]:
        thread.join()
    soak_seconds = time.time() - soak_started
    if not args.kill:
        server.send_signal(signal.SIGINT)
    server.wait(timeout=300)
    if args.kill:  # the killed workers' segments are folded once their processes are gone
        folder = segment_folder(workspace.traces_db)
        deadline = time.time() + 60
        while time.time() < deadline and len(finished_segments(folder)) < len(list(folder.glob("*.open"))) + \
                len(list(folder.glob("*.jsonl"))):
            time.sleep(0.5)

    answered = [r for r in results if r["status"] == 200]
    failed = [r for r in results if r["status"] != 200]
    with TraceStore(workspace.traces_db) as store:
        logged = store.sql("SELECT count(*) AS n FROM traces WHERE collect_run_id IS NULL AND asked_at >= ?",
                           [datetime.fromtimestamp(soak_started, timezone.utc)])[0]["n"]
    versions = CorpusSnapshot(corpus_path(workspace)).document_versions()
    ingest_done = next(c["started"] + c["seconds"] for c in commands if c["command"] == "ingest")
    old_generation = min((r["corpus_generation"] for r in answered), default=None)
    new_answers = [r for r in answered if r["corpus_generation"] != old_generation]
    first_new = min((r["at"] + r["seconds"] for r in new_answers), default=None)
    superseded = [r for r in new_answers if r["route"] in ("replay", "student") and any(
        versions.get(m.group(1)) != int(m.group(2))
        for c in r["citations"] or [] if (m := re.match(r"(.+)@v(\d+)#", c)))]
    figures = {"clients": args.clients, "workers": len(workers), "seconds": round(soak_seconds, 1), "killed": args.kill,
               "requests": len(results), "answered": len(answered), "failed": len(failed),
               "failed_examples": failed[:5], "requests_per_s": round(len(results) / soak_seconds, 1),
               "commands": commands, "failed_commands": sum(c["rc"] != 0 for c in commands),
               "traces_logged": logged, "traces_before": traces_before,
               "new_generation_after_ingest_s": round(first_new - ingest_done, 1) if first_new else None,
               "student_answers_after_swap": sum(r["route"] in ("replay", "student") for r in new_answers),
               "superseded_citations_after_swap": len(superseded),
               "student_versions": sorted({r["student_version"] for r in answered if r["student_version"]}),
               "nightly": nightly_outcome,
               "latency_ms": {route: {"p50": round(statistics.median(v) * 1000, 1),
                                      "p95": round(float(np.percentile(v, 95)) * 1000, 1), "n": len(v)}
                              for route in ("student", "rag")
                              if (v := [r["seconds"] for r in answered if r["route"] == route])}}
    print(f"requests {figures['requests']} ({figures['requests_per_s']}/s), failed {figures['failed']}; "
          f"commands {len(commands)}, failed {figures['failed_commands']}")
    print(f"traces in the store after {'kill -9' if args.kill else 'shutdown'}: {logged} of {len(answered)} "
          f"answered requests ({len(answered) - logged} lost)")
    print(f"new corpus generation answering {figures['new_generation_after_ingest_s']} s after the ingest command "
          f"returned (negative: before its process had exited); "
          f"student answers from it {figures['student_answers_after_swap']}, citing a superseded version "
          f"{figures['superseded_citations_after_swap']} (goal 0)")
    print(f"nightly: {nightly_outcome.get('status')} ({nightly_outcome.get('reason')}); student versions that answered: "
          f"{figures['student_versions']}; latency {figures['latency_ms']}")
    print(f"figures: {save_results('live-kill' if args.kill else 'live', figures)}")


if __name__ == "__main__":
    main()
