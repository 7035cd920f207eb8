"""The router on the versioned COVID FAQ: does it stop serving what changed, and what does it cost?

    python scripts/bench_router.py [--unchanged 79] [--epochs 1]

1. Ingest version 1 of ../shared/datasets/covid_faq_versions (762 questions, 171 of which change).
2. Traffic: every one of the 171 changed questions and `--unchanged` unchanged ones, each in three
   wordings (the FAQ's, and two rephrasings), asked on many days; the last week is held out.
3. Collect with the extractive teacher, curate, train a student (full fine-tune, `--epochs`), promote.
4. Route every wording before and after ingesting version 2: how many changed and unchanged
   questions does the router send to the student? Goal after the update: 0 of the changed ones.
5. High-risk and off-topic questions; router overhead (every check except generation) p50/p95.

The COVID FAQ is medical, so the default high-risk patterns would keep most of it off the student;
steps 1-4 run with `curate.high_risk_patterns = []` to measure freshness alone, and step 5 with the
defaults. Workspace: bench/router-covid (deleted and rebuilt each run).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import time
from datetime import datetime, timedelta, timezone

import numpy as np

from distill import registry
from distill.learn.curate import curate
from distill.learn.train import train
from distill.rag.collect import collect
from distill.rag.index import ingest
from distill.serve.router import Router
from distill.workspace import Workspace

from policyqa import ROOT, save_results

FAQ = ROOT.parent / "shared" / "datasets" / "covid_faq_versions" / "faq_versions.jsonl"
REPHRASINGS = ["{q}", "Can you tell me: {q}", "quick question - {q}"]
OFF_TOPIC = ["What is the capital of France?", "How do I reset my router password?",
             "Which programming language should I learn first?", "What time does the football match start?"]
HIGH_RISK = ["What medication dosage should I take if I have COVID symptoms?",
             "Should I take my patients off their medication?", "Is it safe to be pregnant during COVID?",
             "Can I sue my employer for COVID exposure?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unchanged", type=int, default=79, help="unchanged questions in the traffic besides the 171 changed")
    parser.add_argument("--epochs", type=float, default=1.0, help="student training epochs")
    args = parser.parse_args()
    if not FAQ.exists():
        raise SystemExit(f"{FAQ} not found: this benchmark needs ../shared/datasets/covid_faq_versions")
    home = ROOT / "bench" / "router-covid"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "distill.toml").write_text(f"[curate]\nhigh_risk_patterns = []\n[train]\nepochs = {args.epochs}\n")
    workspace = Workspace(home)
    config = workspace.config()

    rows = [json.loads(line) for line in FAQ.read_text().splitlines()]
    changed = [r for r in rows if r["changed"]]
    unchanged = random.Random(0).sample([r for r in rows if not r["changed"]], args.unchanged)
    started = time.time()
    ingest(workspace, FAQ, config, fmt="faq-versions", version=1)
    queries = traffic(changed + unchanged, home / "queries.jsonl")
    collect(workspace, config, home / "queries.jsonl")
    curation = curate(workspace, config)
    trained = train(workspace, config, curation.dataset_path, progress=False)
    registry.promote(workspace.models_dir, config.train.student_name, trained.version)
    print(f"setup: {queries} queries over {len(changed)} changed + {len(unchanged)} unchanged questions; "
          f"{curation.train} traces kept, {curation.examples} examples; {trained.version} trained in "
          f"{trained.runtime_s:.0f} s ({time.time() - started:.0f} s in all)")

    wordings = {"changed": [w for r in changed for w in phrasings(r)],
                "unchanged": [w for r in unchanged for w in phrasings(r)]}
    before = route_all(workspace, config, wordings)
    ingest(workspace, FAQ, config, fmt="faq-versions", version=2)
    after = route_all(workspace, config, wordings)
    for name, result in (("before the update (v1)", before), ("after ingesting v2", after)):
        print(f"{name}:")
        for group, counts in result["routes"].items():
            total = sum(counts.values())
            print(f"  {group:9s} {total} wordings: eligible for the student {counts.get('eligible', 0)}, "
                  f"served end to end {result['served'][group]} of {result['answered'][group]} answered; "
                  f"reasons {dict(counts)}")
    print(f"  goal: 0 changed questions served after the update -> "
          f"{after['routes']['changed'].get('eligible', 0)} eligible, {after['served']['changed']} served")

    default = Workspace(home).config({"curate": {"high_risk_patterns": load_default_patterns()}})
    with Router.from_workspace(workspace, default, log=False) as router:
        risky = [router.answer(q).route for q in HIGH_RISK]
        off = [router.answer(q).route for q in OFF_TOPIC]
    print(f"high-risk questions served without RAG: {sum(r in ('replay', 'student') for r in risky)} of {len(risky)} (goal 0); "
          f"off-topic: {sum(r in ('replay', 'student') for r in off)} of {len(off)} (goal 0)")
    for state, result in (("before the update", before), ("after the update", after)):
        for kind in ("warm", "cold", "searched"):
            values = result[f"{kind}_ms"]
            if values:
                print(f"router overhead (every check, no generation), {state}, {kind}: {len(values)} questions, "
                      f"p50 {statistics.median(values):.1f} ms, p95 {np.percentile(values, 95):.1f} ms (goal p50 <= 10 ms)")
    print("  warm: a wording seen before (its vector cached); cold: a new wording, one MiniLM forward included;\n"
          "  searched: a new wording whose intent had a changed neighbour document, so the freshness check ran a retrieval")
    save_results("router", {
        "changed_eligible_after": after["routes"]["changed"].get("eligible", 0),
        "changed_served_after": after["served"]["changed"], "changed_wordings": sum(after["routes"]["changed"].values()),
        "unchanged_eligible_before": before["routes"]["unchanged"].get("eligible", 0),
        "unchanged_eligible_after": after["routes"]["unchanged"].get("eligible", 0),
        "unchanged_wordings": sum(after["routes"]["unchanged"].values()),
        "high_risk_served": sum(r in ("replay", "student") for r in risky), "high_risk": len(risky),
        "off_topic_served": sum(r in ("replay", "student") for r in off), "off_topic": len(off),
        "overhead_cold_p50_ms": round(statistics.median(before["cold_ms"]), 2),
        "overhead_cold_p95_ms": round(float(np.percentile(before["cold_ms"], 95)), 2),
        "overhead_warm_p50_ms": round(statistics.median(before["warm_ms"]), 2),
        "overhead_after_update_cold_p50_ms": round(statistics.median(after["cold_ms"]), 2),
        "overhead_after_update_searched_p50_ms": round(statistics.median(after["searched_ms"]), 2) if after["searched_ms"] else None})


def load_default_patterns() -> list[str]:
    import tomllib

    from distill.config import DEFAULTS_FILE

    return tomllib.loads(DEFAULTS_FILE.read_text())["curate"]["high_risk_patterns"]


def question(row: dict) -> str:
    return re.sub(r"^Q:\s*", "", row["question"]).strip()


def phrasings(row: dict) -> list[str]:
    q = question(row)
    return [template.format(q=q[0].lower() + q[1:] if template != "{q}" else q) for template in REPHRASINGS]


def traffic(rows: list[dict], path) -> int:
    """Each wording asked on 5 of the first 21 days and once in the last week (held out)."""
    start = datetime(2020, 5, 1, tzinfo=timezone.utc)
    rng = random.Random(0)
    lines = []
    for row in rows:
        for i, wording in enumerate(phrasings(row)):
            days = rng.sample(range(21), 5) + [rng.randrange(22, 28)]
            for day in days:
                lines.append({"query": wording, "query_id": f"{row['id']}|{i}|{day}",
                              "timestamp": (start + timedelta(days=day, minutes=rng.randrange(1440))).isoformat()})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return len(lines)


def route_all(workspace, config, wordings: dict[str, list[str]], answer_each: int = 30) -> dict:
    """Every wording through the checks; the first `answer_each` of each group answered end to end."""
    routes, served, answered, warm, cold, searched = {}, {}, {}, [], [], []
    with Router.from_workspace(workspace, config, log=False) as router:
        for group, texts in wordings.items():
            counts: dict[str, int] = {}
            for text in texts:
                began = time.perf_counter()
                failed, _, _ = router.check(text)
                warm.append((time.perf_counter() - began) * 1000)
                counts[failed or "eligible"] = counts.get(failed or "eligible", 0) + 1
                began = time.perf_counter()
                _, checks, _ = router.check(f"please tell me, {text}")  # never seen: embedded on the request path
                (searched if checks.get("evidence_searched") else cold).append((time.perf_counter() - began) * 1000)
            routes[group] = counts
            results = [router.answer(text) for text in texts[:answer_each]]
            served[group] = sum(r.route in ("replay", "student") for r in results)
            answered[group] = len(results)
    return {"routes": routes, "served": served, "answered": answered, "warm_ms": warm, "cold_ms": cold,
            "searched_ms": searched}


if __name__ == "__main__":
    main()
