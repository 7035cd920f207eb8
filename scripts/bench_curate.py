"""Is the confidence filter informative, and does curation scale?

1. PolicyQA traffic (4,000 queries, Zipf) answered by the extractive teacher, then curated. Each
   trace's token F1 against gold (kept aside by the traffic script) tells whether the teacher was
   right; we report the F1 of kept vs rejected traces and the AUROC of each confidence signal, and
   of their combination (mean percentile rank, no fitted weights), for predicting F1 >= 0.5.
2. Scale: 100,000 synthetic traces with 10,000 distinct queries, curated end to end (goal <= 60 s).

    python scripts/bench_curate.py [--skip-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import time
from datetime import datetime, timedelta, timezone

import numpy as np
from bench_teacher import workspace as policyqa_workspace

from distill.learn.curate import curate
from distill.rag.collect import collect
from distill.rag.traffic import make_traffic
from distill.store.schema import Trace
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from policyqa import ROOT, best_f1, require_policyqa, split_pairs


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def informativeness() -> None:
    traffic = make_traffic(require_policyqa(), ROOT / "bench" / "traffic", n_queries=4000, seed=0)
    gold = {g["query_id"]: g for g in map(json.loads, traffic.gold_file.read_text().splitlines())}
    home = ROOT / "bench" / "curate-policyqa"
    if not (home / "traces" / "traces.duckdb").exists():
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "index").exists():
            (home / "index").symlink_to(policyqa_workspace().index_dir)
        collect(Workspace(home), Workspace(home).config(), traffic.queries_file)
    workspace = Workspace(home)
    started = time.perf_counter()
    result = curate(workspace, workspace.config())
    elapsed = time.perf_counter() - started
    with TraceStore(workspace.traces_db) as store:
        rows = store.sql("""
            SELECT t.query_id, t.answer, t.refused, t.top_score, t.score_margin, t.retriever_agreement,
                   t.groundedness, t.answer_score, c.decision, c.reason, k.agreement AS intent_agreement, k.frequency
            FROM curation c JOIN traces t USING (trace_id) JOIN intents k USING (run_id, intent_id)
            WHERE c.run_id = ?""", [result.run_id])
    for row in rows:
        row["f1"] = best_f1(row["answer"], gold[row["query_id"]]["gold_answers"])
    print(f"PolicyQA traffic: {result.traces_seen} traces, {result.intents} intents, curated in {elapsed:.1f} s")
    for decision in ("train", "eval", "reject"):
        chosen = [r["f1"] for r in rows if r["decision"] == decision]
        print(f"  {decision:7} {len(chosen):5d} traces, teacher F1 vs gold {np.mean(chosen) if chosen else 0:.3f}")
    reasons = {}
    for r in rows:
        if r["decision"] == "reject":
            reasons.setdefault(r["reason"], []).append(r["f1"])
    for reason, f1s in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        print(f"    rejected for {reason:16} {len(f1s):5d} traces, F1 {np.mean(f1s):.3f}")
    # Signals are compared on the tune half of the websites; the combination of the two best there
    # is then reported on the report half, so no choice is made on the figures it is judged by.
    halves = {name: {p["scope"] for p in pairs} for name, pairs in split_pairs().items()}
    names = ("top_score", "score_margin", "retriever_agreement", "answer_score", "intent_agreement", "frequency")
    distinct = list({(gold[r["query_id"]]["scope"], gold[r["query_id"]]["query"]): r for r in rows}.values())
    for population, chosen_rows in (("traces (frequent wordings weigh more)", rows), ("distinct wordings", distinct)):
        figures = {}
        for half, scopes in halves.items():
            answered = [r for r in chosen_rows if not r["refused"] and gold[r["query_id"]]["scope"] in scopes]
            labels = np.array([r["f1"] >= 0.5 for r in answered])
            signals = {name: np.array([r[name] or 0.0 for r in answered], dtype=float) for name in names}
            figures[half] = (labels, signals, {name: auroc(v, labels) for name, v in signals.items()})
        best_two = sorted(names, key=lambda n: -figures["tune"][2][n])[:2]
        print(f"  AUROC for a correct answer (F1 >= 0.5), {population}:")
        print(f"    {'signal':40} {'tune':>6} {'report':>7}")
        for name in names:
            print(f"    {name:40} {figures['tune'][2][name]:6.3f} {figures['report'][2][name]:7.3f}")
        for label, chosen in (("mean rank of all", names), (f"mean rank of {' + '.join(best_two)}", best_two)):
            values = [auroc(np.mean([np.argsort(np.argsort(figures[h][1][n])) for n in chosen], axis=0), figures[h][0])
                      for h in ("tune", "report")]
            print(f"    {label:40} {values[0]:6.3f} {values[1]:7.3f}   (goal >= 0.75)")


def synthetic_workspace(home, n_traces: int, n_distinct: int):
    """A workspace on the PolicyQA index holding `n_traces` synthetic teacher traces over
    `n_distinct` real PolicyQA (website, question) wordings, Zipf-distributed, one every 24 s.
    Returns the workspace and the number of distinct wordings asked."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "index").symlink_to(policyqa_workspace().index_dir)
    workspace = Workspace(home)
    rng = random.Random(0)
    # Realistic wordings: every PolicyQA question asked of every one of its 20 websites (11,360 pairs).
    asked = [p for half in split_pairs().values() for p in half]
    pairs = sorted({(scope, p["query"]) for scope in {p["scope"] for p in asked} for p in asked})
    rng.shuffle(pairs)
    pairs = pairs[:n_distinct]
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(pairs))]
    # every wording asked at least once, the rest of the traffic Zipf-distributed over them
    picks = list(range(len(pairs))) + rng.choices(range(len(pairs)), weights=weights, k=n_traces - len(pairs))
    rng.shuffle(picks)
    step = timedelta(seconds=24 * 100_000 / n_traces)  # the same 28 days whatever the volume
    with TraceStore(workspace.traces_db) as store:
        for first in range(0, n_traces, 5000):
            store.append([_synthetic_trace(n, *pairs[q], q, start + n * step)
                          for n, q in enumerate(picks[first:first + 5000], first)])
    return workspace, len(set(picks))


def _synthetic_trace(n: int, scope: str, query: str, q: int, asked_at: datetime) -> Trace:
    return Trace(
        query_id=f"s{n}", scope=scope, query=query, answer=f"We describe this in section {q % 7}.",
        citations=[f"{scope}/000@v1#0"], cited_doc_versions=[{"doc_id": f"{scope}/000", "version": 1}],
        retrieved=[f"{scope}/000@v1#0"], refused=False,
        refusal_reason=None, route="rag", route_reason="collect", top_score=0.6, score_margin=0.05,
        retriever_agreement=0.4, mean_logprob=None, groundedness=1.0, citation_valid=True, latency_ms=5.0,
        retrieval_ms=2.0, prompt_tokens=0, completion_tokens=0, model="m", backend="extractive",
        asked_at=asked_at)


def scale(n_traces: int = 100_000, n_distinct: int = 10_000) -> None:
    workspace, distinct = synthetic_workspace(ROOT / "bench" / "curate-scale", n_traces, n_distinct)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = curate(workspace, workspace.config())
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"scale: {result.traces_seen:,} traces, {distinct:,} distinct queries -> {result.intents:,} intents, "
          f"{result.train:,} train, {result.examples:,} examples in {elapsed:.1f} s (goal <= 60 s); "
          f"peak RSS {peak / 1024:.0f} MB (was {before / 1024:.0f} MB before curating)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    informativeness()
    if not args.skip_scale:
        scale()


if __name__ == "__main__":
    main()
