"""Do users' ratings make distill more right? (issue #23)

    python scripts/bench_feedback.py [--sets stackfaq,policyqa] [--rate 0.1] [--questions 4000] [--workers 2]

For each set, a four-week log of questions drawn Zipf (exponent 1.05) over its (document, wording)
pairs, each asked of its own scope: StackFAQ's 1,249 rephrasings of 125 threads, and PolicyQA dev's
(website, question) pairs. Weeks 1-2 are the tune weeks, weeks 3-4 the report weeks. Two arms on
copies of one ingested workspace:

- before: collect the tune weeks with the teacher, curate (the cutoff at the end of week 2),
  train a student (one step: with no confidence evidence, which only `distill nightly` fits, it
  never generates, so its weights do not matter), promote it, and route every report-week question with `Router`;
- after: the same, but simulated users rate `--rate` of the tune weeks' answers (the dataset's own
  judgement: +1 when the cited document answers the question, StackFAQ's thread or one of
  PolicyQA's gold segments, else -1; a refusal of an answerable question is -1), imported with
  `distill import` (Langfuse score lines) before curating.

On the report weeks, with wordings asked in the tune weeks (seen) and the others (unseen) apart:
the teacher's right-document rate (every report-week question asked of the workspace's teacher,
which applies the ratings it has), the share the router serves from the fast path and its error
against gold (the served answer's document does not answer the question). Also: how long after a
negative rating the rated intent stops being served, in the router that took it and in `--workers`
other router processes (each following the workspace every `router.reload_s`), and `distill
import`'s speed on 100,000 rating lines. Figures go to bench/results/feedback.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from distill import registry
from distill.learn.curate import curate
from distill.learn.train import train
from distill.metrics import normalize_query
from distill.rag.collect import collect
from distill.rag.corpus import cited_document
from distill.rag.index import ingest
from distill.rag.traffic import _pairs
from distill.serve.router import Router
from distill.store.feedback import import_scores
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from policyqa import ROOT, load_results, require_policyqa, save_results
from stackfaq import SCOPE, load_threads, write_corpus

HOME = ROOT / "bench" / "feedback"
START = datetime(2026, 9, 1, tzinfo=timezone.utc)
TUNE_DAYS = 14


def stackfaq_pairs() -> tuple[list[dict], callable]:
    threads = load_threads()
    pairs = [{"scope": SCOPE, "query": r, "gold": {t["doc_id"]}} for t in threads for r in t["rephrasings"]]
    return pairs, lambda ws: ingest(ws, write_corpus(threads, ws.home / "corpus.jsonl"), ws.config())


def policyqa_pairs() -> tuple[list[dict], callable]:
    pairs = [{"scope": site, "query": question, "gold": set(entry["doc_ids"])}
             for (site, question), entry in sorted(_pairs(require_policyqa()).items())]
    return pairs, lambda ws: ingest(ws, require_policyqa(), ws.config(), fmt="squad")


SETS = {"stackfaq": stackfaq_pairs, "policyqa": policyqa_pairs}


def zipf_log(pairs: list[dict], n: int, seed: int = 0) -> list[dict]:
    """n questions over four weeks, drawn Zipf (1.05) over the pairs in a fixed random order."""
    rng = random.Random(seed)
    order = list(pairs)
    rng.shuffle(order)
    weights = [1 / (rank + 1) ** 1.05 for rank in range(len(order))]
    log = []
    for number, pair in enumerate(rng.choices(order, weights, k=n)):
        asked = START + timedelta(seconds=rng.uniform(0, 28 * 86400))
        log.append({**pair, "query_id": f"q{number:05d}", "timestamp": asked})
    return sorted(log, key=lambda q: q["timestamp"])


def write_queries(path: Path, log: list[dict]) -> Path:
    with path.open("w") as out:
        for q in log:
            out.write(json.dumps({"query_id": q["query_id"], "query": q["query"], "scope": q["scope"],
                                  "timestamp": q["timestamp"].isoformat()}) + "\n")
    return path


def base_workspace(name: str, build) -> Workspace:
    """The set's corpus ingested once (both arms copy it)."""
    ws = Workspace(HOME / name / "base")
    if not (ws.index_dir / "dense.json").exists():
        shutil.rmtree(ws.home, ignore_errors=True)
        ws.home.mkdir(parents=True)
        print(f"ingesting {name} ...", flush=True)
        build(ws)
    return ws


def arm_workspace(base: Workspace, name: str, arm: str) -> Workspace:
    ws = Workspace(HOME / name / arm)
    shutil.rmtree(ws.home, ignore_errors=True)
    shutil.copytree(base.home, ws.home, ignore=shutil.ignore_patterns("traces", "models", "datasets"))
    (ws.home / "distill.toml").write_text('[train]\nmax_steps = 1\nbatch_size = 2\n[router]\nshadow_share = 0.0\n')
    return ws


def simulated_ratings(ws: Workspace, gold: dict[str, set], rate: float, seed: int = 1) -> Path:
    """Langfuse score lines: `rate` of the tune weeks' answers, rated by the dataset's judgement."""
    rng = random.Random(seed)
    with TraceStore(ws.traces_db) as store:
        traces = store.sql("SELECT trace_id, query_id, citations, refused, asked_at FROM traces ORDER BY asked_at")
    path = ws.home / "ratings.jsonl"
    with path.open("w") as out:
        for t in traces:
            if rng.random() >= rate:
                continue
            right = not t["refused"] and cited_document(t["citations"]) in gold[t["query_id"]]
            out.write(json.dumps({"id": f"sim-{t['trace_id']}", "traceId": t["trace_id"], "name": "user-feedback",
                                  "value": int(right), "dataType": "BOOLEAN", "authorUserId": f"user-{rng.randrange(400)}",
                                  "timestamp": (t["asked_at"] + timedelta(minutes=5)).isoformat()}) + "\n")
    return path


def run_arm(base: Workspace, name: str, arm: str, log: list[dict], rate: float) -> dict:
    ws = arm_workspace(base, name, arm)
    config = ws.config()
    cutoff = START + timedelta(days=TUNE_DAYS)
    tune = [q for q in log if q["timestamp"] < cutoff]
    report = [q for q in log if q["timestamp"] >= cutoff]
    gold = {q["query_id"]: q["gold"] for q in log}
    began = time.time()
    collect(ws, config, write_queries(ws.home / "tune.jsonl", tune))
    figures: dict = {"tune_questions": len(tune), "report_questions": len(report)}
    if arm == "after":
        ratings = simulated_ratings(ws, gold, rate)
        imported = import_scores(ws, ratings)
        with TraceStore(ws.traces_db) as store:
            (counts,) = store.sql("SELECT count(*) AS rated, count(*) FILTER (WHERE score < 0) AS negative FROM feedback")
        figures.update(ratings=counts["rated"], negative_ratings=counts["negative"], import_bad=len(imported.bad))
    curation = curate(ws, config, cutoff=cutoff + timedelta(days=1))
    figures.update(curate_train=curation.train, rated_wrong_rejected=curation.decisions.get("reject", {}).get("rated_wrong", 0))
    result = train(ws, config, curation.dataset_path, progress=False)
    registry.promote(ws.models_dir, config.train.student_name, result.version)
    seen = {(q["scope"], normalize_query(q["query"])) for q in tune}
    with Router.from_workspace(ws, config, log=False, watch=False) as router:
        routed = router.answer_batch([(q["query"], q["scope"]) for q in report])
        taught = router.teacher.answer_batch([(q["query"], q["scope"]) for q in report])
    rows = [{"seen": (q["scope"], normalize_query(q["query"])) in seen, "gold": q["gold"],
             "fast": r.route in ("replay", "student"), "fast_right": cited_document(r.citations) in q["gold"],
             "teacher_right": not t.refused and cited_document(t.citations) in q["gold"]}
            for q, r, t in zip(report, routed, taught)]
    for kind, group in (("all", rows), ("seen", [r for r in rows if r["seen"]]), ("unseen", [r for r in rows if not r["seen"]])):
        served = [r for r in group if r["fast"]]
        figures[kind] = {"questions": len(group),
                         "teacher_right_document": round(float(np.mean([r["teacher_right"] for r in group])), 4) if group else None,
                         "fast_path_share": round(len(served) / len(group), 4) if group else None,
                         "fast_path_error_vs_gold": round(float(np.mean([not r["fast_right"] for r in served])), 4) if served else None}
    figures["seconds"] = round(time.time() - began)
    print(f"  {name} {arm}: " + "; ".join(
        f"{kind} ({figures[kind]['questions']}): teacher right {figures[kind]['teacher_right_document']}, fast path "
        f"{figures[kind]['fast_path_share']} with error {figures[kind]['fast_path_error_vs_gold']}"
        for kind in ("all", "seen", "unseen")) + (f"; {figures.get('ratings')} ratings ({figures.get('negative_ratings')} "
                                                   f"negative), {figures['rated_wrong_rejected']} traces rejected "
                                                   f"rated_wrong" if arm == "after" else ""), flush=True)
    return {"workspace": ws, "figures": figures, "report": report}


WORKER = """
import sys, time
from distill.serve.router import Router
router = Router.from_workspace(sys.argv[1], log=False)
query, scope = sys.argv[2], sys.argv[3]
print(router.answer(query, scope).reason, flush=True)
sys.stdin.readline()
began = time.monotonic()
while router.answer(query, scope).reason == "served" and time.monotonic() - began < 30:
    time.sleep(0.01)
print(round(time.monotonic() - began, 3), flush=True)
"""


def withdrawal_delay(ws: Workspace, report: list[dict], workers: int) -> dict:
    """Seconds from a negative rating to its intent off the fast path: here, and in other processes."""
    with Router.from_workspace(ws, log=False, watch=False) as router:
        question = next((q for q in report if router.answer(q["query"], q["scope"]).route in ("replay", "student")), None)
    if question is None:
        return {"note": "nothing is served from the fast path"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(ws.home), question["query"], question["scope"]],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    try:
        ready = [p.stdout.readline().strip() for p in procs]
        with Router.from_workspace(ws, log=False, watch=False) as router:
            answer = router.answer(question["query"], question["scope"])
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            began = time.monotonic()
            router.feedback(answer.trace_id, -1, source="bench")
            here_s = time.monotonic() - began  # the rating call itself; the next answer here is already off
            here = router.answer(question["query"], question["scope"]).reason
        delays = [float(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.wait(timeout=60)
    return {"reload_s": ws.config().router.reload_s, "workers_ready": ready, "this_router_next_reason": here,
            "rating_call_s": round(here_s, 4), "other_workers_s": delays}


def import_speed(ws: Workspace, n: int = 100_000) -> dict:
    """`distill import` of n rating lines naming the workspace's traces, on a copy of it."""
    copy = Workspace(ws.home.parent / "import-speed")
    shutil.rmtree(copy.home, ignore_errors=True)
    shutil.copytree(ws.home, copy.home, ignore=shutil.ignore_patterns("models", "datasets"))
    with TraceStore(copy.traces_db) as store:
        ids = [r["trace_id"] for r in store.sql("SELECT trace_id FROM traces")]
    rng = random.Random(2)
    path = copy.home / "many.jsonl"
    with path.open("w") as out:
        for i in range(n):
            out.write(json.dumps({"id": f"bulk-{i}", "traceId": rng.choice(ids), "name": "thumbs",
                                  "value": rng.random() < 0.8, "authorUserId": f"u{rng.randrange(5000)}"}) + "\n")
    began = time.perf_counter()
    first = import_scores(copy, path)
    seconds = time.perf_counter() - began
    began = time.perf_counter()
    again = import_scores(copy, path)
    rerun_s = time.perf_counter() - began
    return {"records": n, "imported": first.imported, "seconds": round(seconds, 2),
            "records_per_s": round(n / seconds), "rerun_imported": again.imported, "rerun_seconds": round(rerun_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="stackfaq,policyqa")
    parser.add_argument("--rate", type=float, default=0.1, help="share of the tune weeks' answers users rate")
    parser.add_argument("--questions", type=int, default=4000, help="questions in each four-week log")
    parser.add_argument("--workers", type=int, default=2, help="other router processes for the withdrawal delay")
    parser.add_argument("--timings-only", action="store_true",
                        help="keep the arms' figures of the last run; measure the withdrawal delay and import speed again")
    args = parser.parse_args()
    previous = load_results("feedback") or {}
    figures: dict = {"rate": args.rate, "questions": args.questions, "sets": previous.get("sets", {}) if args.timings_only else {}}
    for name in args.sets.split(","):
        pairs, build = SETS[name]()
        base = base_workspace(name, build)
        log = zipf_log(pairs, args.questions)
        report = [q for q in log if q["timestamp"] >= START + timedelta(days=TUNE_DAYS)]
        print(f"{name}: {len(pairs)} pairs, {len(log)} questions", flush=True)
        if args.timings_only:
            entry = figures["sets"][name]
        else:
            arms = {arm: run_arm(base, name, arm, log, args.rate) for arm in ("before", "after")}
            entry = {arm: run["figures"] for arm, run in arms.items()}
            for kind in ("all", "seen", "unseen"):
                b, a = entry["before"][kind], entry["after"][kind]
                entry.setdefault("lift", {})[kind] = {
                    "teacher_right_document": round(a["teacher_right_document"] - b["teacher_right_document"], 4),
                    "fast_path_error_vs_gold": (b["fast_path_error_vs_gold"], a["fast_path_error_vs_gold"])}
        entry["withdrawal"] = withdrawal_delay(Workspace(HOME / name / "after"), report, args.workers)
        print(f"  withdrawal: {entry['withdrawal']}", flush=True)
        figures["sets"][name] = entry
        save_results("feedback", figures)
    first = next(iter(figures["sets"]))
    figures["import"] = import_speed(Workspace(HOME / first / "after"))
    print(f"import: {figures['import']}", flush=True)
    print(f"figures: {save_results('feedback', figures)}")


if __name__ == "__main__":
    main()
