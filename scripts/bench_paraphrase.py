"""Does the student serve people's own wordings, under the error bound? StackFAQ's real rephrasings.

    python scripts/bench_paraphrase.py [--epochs 8] [--skip-train]

The corpus is StackFAQ's 125 threads (one document each); four weeks of traffic ask a few of each
thread's human rephrasings before the cutoff and the others only in the held-out week (novel
wordings), beside off-topic questions and other corpora's questions (out of scope). See
`scripts/stackfaq.py`. The pipeline runs with its defaults: ingest, collect (extractive teacher),
curate, train a SmolLM2-135M student, then the systems of `distill eval` answer the held-out week:

- cache: the nearest trained wording's answer at one static cosine (`eval.cache_threshold`), GPTCache-style;
- replay: the intent's agreed answer under the router's calibrated decision (the ablation);
- student: the open-book student alone, on every question, reading the evidence retrieved now;
- routed: the router (calibrated coverage and freshness, the replayed answer; the open-book student
  where replay cannot answer and its confidence evidence allows), RAG for the rest.

For each, on seen, novel and out-of-scope wordings apart and on each half of the threads (settings
were chosen on the tune half; quote the report half): share served without RAG, error rate among
served answers (ground truth: the answer's thread is not the question's thread, and its token F1
against the teacher's answer to the same question is below `eval.success_f1`), token F1 against the
thread's answers, latency p50. Also: intent purity and inconsistent rejections of curation's
clustering against StackFAQ's true grouping, with and without the teacher's evidence.
Figures go to bench/results/paraphrase.json.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from distill import registry
from distill.jobs.eval_sets import held_out_items, load_gold_rows
from distill.jobs.evaluate import evaluate_systems
from distill.learn.curate import curate
from distill.learn.intents import cluster_vectors, normalize_answer, wording_evidence
from distill.learn.train import train
from distill.llm.local import SMOLLM2
from distill.metrics import best_f1, normalize_query, token_f1
from distill.rag.collect import collect
from distill.rag.embed import embed, load_embedder
from distill.rag.index import ingest
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from policyqa import ROOT, save_results
from stackfaq import load_threads, make_traffic, split_threads, write_corpus

HOME = ROOT / "bench" / "paraphrase"
SYSTEMS = ("cache", "replay", "student", "routed")


def build(workspace: Workspace, config, threads: list[dict]) -> dict:
    """Corpus, traffic and traces (each step resumes: ingest and collect skip what is stored)."""
    traffic = make_traffic(threads, workspace.home / "traffic")
    started = time.time()
    ingest(workspace, write_corpus(threads, workspace.home / "corpus.jsonl"), config)
    report = collect(workspace, config, traffic["queries"])
    print(f"traffic: {traffic['counts']} held out; collected {report.answered} new traces "
          f"({report.skipped_existing} stored before) in {time.time() - started:.0f} s")
    return traffic


def grouping_quality(workspace: Workspace, config, gold: dict, cutoff) -> dict:
    """Purity of curation's intents against the threads, intents per thread, and the share of the
    pre-cutoff traces that an answer-agreement rule would reject as inconsistent, for clustering by
    question similarity alone (the old rule, at 0.7) and with the teacher's evidence (the default)."""
    with TraceStore(workspace.traces_db) as store:
        traces = store.curation_input()
    before = [t for t in traces if t["asked_at"] < cutoff]
    keys = [(t["scope"], normalize_query(t["query"])) for t in before]
    distinct = sorted(set(keys), key=str)
    vectors = embed(load_embedder(config.index.embedding_model), [w for _, w in distinct], batch_size=128)
    evidence = wording_evidence(before, keys, distinct)
    thread_of = {normalize_query(g["query"]): g["thread"] for g in gold.values()}
    out = {}
    for name, threshold, ev in (("question similarity only (0.7)", 0.7, None),
                                (f"same evidence (default {config.curate.intent_threshold})",
                                 config.curate.intent_threshold, evidence)):
        intent_of = cluster_vectors(distinct, vectors, threshold, ev)
        members: dict[int, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            members[intent_of[key]].append(i)
        pure = total = inconsistent = 0
        per_thread: dict[int, set] = defaultdict(set)
        for number, indices in members.items():
            threads = Counter(thread_of[keys[i][1]] for i in indices if thread_of.get(keys[i][1]) is not None)
            if threads:
                top, count = threads.most_common(1)[0]
                pure, total = pure + count, total + sum(threads.values())
                per_thread[top].add(number)
            answers = Counter("<refused>" if before[i]["refused"] else normalize_answer(before[i]["answer"])
                              for i in indices)
            if answers.most_common(1)[0][1] / len(indices) < config.curate.min_agreement:
                inconsistent += len(indices)
        out[name] = {"purity": round(pure / total, 4), "intents": len(members),
                     "intents_per_thread": round(np.mean([len(s) for s in per_thread.values()]), 2),
                     "inconsistent_traces": round(inconsistent / len(before), 4)}
    return out


class ThreadOf:
    """Which thread an answer comes from: the thread holding the sentence it matches best."""

    def __init__(self, threads: list[dict]):
        self.sentences = [(t["thread"], s) for t in threads for a in [t["question"]] + t["answers"]
                          for s in re.split(r"(?<=[.!?])\s+", a) if s.strip()]

    def __call__(self, answer: str) -> int | None:
        if not answer.strip():
            return None
        best = max(self.sentences, key=lambda pair: token_f1(answer, pair[1]))
        return best[0] if token_f1(answer, best[1]) > 0 else None


def judged(items, outcomes, gold_by_query, thread_of: ThreadOf, success_f1: float, halves) -> dict:
    """Per system, per (kind, half): share served without RAG, ground-truth error rate among those
    served, token F1 against the thread's answers, latency p50."""
    teacher = outcomes["teacher"]
    table: dict = {}
    for name in SYSTEMS:
        if name not in outcomes:
            continue
        groups: dict[str, list] = defaultdict(list)
        for item, outcome, rag in zip(items, outcomes[name], teacher):
            g = gold_by_query[normalize_query(item.query)]
            half = "out_of_scope" if g["thread"] is None else ("tune" if g["thread"] in halves["tune"] else "report")
            served = outcome["route"] != "rag"
            wrong = None
            if served:
                answered = thread_of(outcome["answer"]) if not outcome["refused"] else None
                if g["thread"] is None:
                    wrong = not outcome["refused"]
                else:
                    wrong = answered != g["thread"] and token_f1(outcome["answer"], rag["answer"]) < success_f1
            f1 = 0.0 if outcome["refused"] or g["thread"] is None else best_f1(outcome["answer"], g["gold_answers"])
            row = (item.weight, served, wrong, f1, outcome["latency_ms"])
            groups[f"{g['kind']}/{half}"].append(row)
            if g["thread"] is not None:
                groups[f"{g['kind']}/all"].append(row)
        table[name] = {key: _summary(rows) for key, rows in sorted(groups.items())}
    return table


def _summary(rows: list[tuple]) -> dict:
    weight = sum(w for w, *_ in rows)
    served = [(w, wrong) for w, s, wrong, _, _ in rows if s]
    served_weight = sum(w for w, _ in served)
    return {"traffic": weight, "served": round(served_weight / weight, 4) if weight else None,
            "served_traffic": served_weight, "errors": sum(w for w, wrong in served if wrong),
            "error_rate": round(sum(w for w, wrong in served if wrong) / served_weight, 4) if served_weight else None,
            "f1_vs_thread": round(sum(w * f for w, _, _, f, _ in rows) / weight, 4) if weight else None,
            "latency_p50_ms": round(float(np.percentile(np.repeat([r[4] for r in rows], [r[0] for r in rows]), 50)), 1)}


def router_overhead(workspace: Workspace, config, queries: list[str]) -> dict:
    """Every check before generation for wordings this router has never embedded (a fresh router:
    one MiniLM forward, the coverage decision with its retrieval, freshness), one at a time."""
    from distill.serve.router import Router

    from stackfaq import SCOPE

    with Router.from_workspace(workspace, config, log=False) as router:
        times = []
        for query in queries:
            began = time.perf_counter()
            router.check(query, SCOPE)
            times.append((time.perf_counter() - began) * 1000)
    return {"queries": len(times), "p50_ms": round(float(np.percentile(times, 50)), 2),
            "p95_ms": round(float(np.percentile(times, 95)), 2)}


def cache_sweep(workspace: Workspace, config, gold_rows: list[dict], threads: list[dict], halves: dict,
                thresholds=(0.7, 0.75, 0.8, 0.85, 0.9, 0.95)) -> dict:
    """The static semantic cache at several cosine thresholds on the novel wordings of the report
    half: share served and ground-truth error (the nearest trained wording's intent's answer, judged
    as in `judged` against the teacher's held-out answer), to compare with the routed system at the
    same observed error."""
    from distill.serve.router import Router

    with TraceStore(workspace.traces_db) as store:
        teacher = {row["query"]: row["answer"] for row in store.sql("SELECT query, answer FROM traces")}
    thread_of = ThreadOf(threads)
    novel = [g for g in gold_rows if g["kind"] == "novel" and g["thread"] in halves["report"]]
    seen = {}
    with Router.from_workspace(workspace, config, log=False) as router:
        answers = {c["intent_id"]: c.get("answer") or "" for c in router.student.manifest["intents"]}
        for g in novel:
            if g["query"] not in seen:
                _, checks, intent, _ = router.assess(g["query"], g["scope"])
                answer = answers.get((intent or {}).get("intent_id"), "")
                wrong = bool(answer) and thread_of(answer) != g["thread"] and \
                    token_f1(answer, teacher.get(g["query"], "")) < config.eval.success_f1
                seen[g["query"]] = (checks.get("coverage", 0.0) if intent else 0.0, wrong)
    sweep = {}
    for t in thresholds:
        served = [seen[g["query"]][1] for g in novel if seen[g["query"]][0] >= t]
        sweep[t] = {"served": round(len(served) / len(novel), 4), "errors": sum(served),
                    "error_rate": round(sum(served) / len(served), 4) if served else None}
    return sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=None, help="training epochs (default: train.epochs)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop training after this many steps (1: a placeholder student, when only the router's "
                             "decision and replay are measured)")
    parser.add_argument("--rewordings", type=int, default=0,
                        help="curate.rewordings: rewordings SmolLM2-135M writes per trained wording, kept when the "
                             "extractive teacher answers them the way their intent is answered")
    parser.add_argument("--home", default=str(HOME), help="the benchmark workspace (a copy keeps variants apart)")
    parser.add_argument("--no-student", action="store_true",
                        help="never ask the student (replay, the cache and the decision only)")
    parser.add_argument("--skip-train", action="store_true", help="evaluate the promoted student again")
    parser.add_argument("--max-error-rate", type=float, default=None, help="router.max_error_rate (default: the config's)")
    parser.add_argument("--decision-only", action="store_true",
                        help="only time the router's checks on novel wordings and sweep the static cache's threshold")
    args = parser.parse_args()
    threads = load_threads()
    workspace = Workspace(Path(args.home))
    workspace.home.mkdir(parents=True, exist_ok=True)
    overrides = {"router": {"max_error_rate": args.max_error_rate} if args.max_error_rate is not None else {},
                 "curate": {"rewordings": args.rewordings, "rewording_model": SMOLLM2 if args.rewordings else ""},
                 "train": {key: value for key, value in (("epochs", args.epochs), ("max_steps", args.max_steps))
                           if value is not None}}
    config = workspace.config(overrides)
    traffic = build(workspace, config, threads)
    gold_rows = load_gold_rows(traffic["gold"])
    gold_by_id = {g["query_id"]: g for g in gold_rows}
    gold_by_query = {normalize_query(g["query"]): g for g in gold_rows}

    novel = sorted({g["query"] for g in gold_rows if g["kind"] == "novel"})
    if args.decision_only:
        print(f"router overhead, novel wordings: {router_overhead(workspace, config, novel)}")
        sweep = cache_sweep(workspace, config, gold_rows, threads, split_threads(threads))
        for t, row in sweep.items():
            print(f"static cache at cosine {t}: novel wordings (report half) served {row['served']:.1%}, "
                  f"{row['errors']} wrong ({row['error_rate'] if row['error_rate'] is not None else float('nan'):.1%})")
        return
    grouping = grouping_quality(workspace, config, gold_by_id, traffic["cutoff"])
    print("intents against the true threads (pre-cutoff traces):")
    for name, figures in grouping.items():
        print(f"  {name:34} purity {figures['purity']:.3f}, {figures['intents']} intents, "
              f"{figures['intents_per_thread']} per thread, inconsistent {figures['inconsistent_traces']:.1%}")

    if not args.skip_train:
        started = time.time()
        curation = curate(workspace, config)
        print(f"curate: {curation.train} traces kept, {curation.examples} examples "
              f"({curation.rewordings_kept} of {curation.rewordings_written} rewordings kept), rejected "
              f"{dict(curation.decisions.get('reject', {}))} ({time.time() - started:.0f} s)")
        result = train(workspace, config, curation.dataset_path, progress=True)
        registry.promote(workspace.models_dir, config.train.student_name, result.version)
        print(f"train: {result.version}, {result.steps} steps in {result.runtime_s:.0f} s, "
              f"loss {result.losses[0]:.2f} -> {result.losses[-1]:.2f}")

    items = held_out_items(workspace, gold_rows, limit=100_000)
    started = time.time()
    figures = evaluate_systems(workspace, config, items, progress=True, keep_outcomes=True, generate=not args.no_student)
    print(f"evaluated {len(items)} distinct held-out questions ({figures['traffic']} asked) in {time.time() - started:.0f} s")
    halves = split_threads(threads)
    table = judged(items, figures.pop("outcomes"), gold_by_query, ThreadOf(threads), config.eval.success_f1, halves)
    print(f"decision: {figures['decision']}")
    print(f"{'system':8} {'wordings/threads':22} {'traffic':>7} {'served':>7} {'errors':>7} {'err rate':>8} "
          f"{'F1 thread':>9} {'p50 ms':>8}")
    for name, groups in table.items():
        for key, row in groups.items():
            print(f"{name:8} {key:22} {row['traffic']:7d} {row['served']:7.1%} {row['errors']:7d} "
                  f"{(row['error_rate'] if row['error_rate'] is not None else float('nan')):8.1%} "
                  f"{row['f1_vs_thread']:9.3f} {row['latency_p50_ms']:8.1f}")
    report = {name: groups.get("novel/report", {}) for name, groups in table.items()}
    print(f"novel wordings, report half: routed serves "
          f"{report['routed'].get('served', 0):.1%} (error {report['routed'].get('error_rate') or 0:.1%}), "
          f"the static cache {report['cache'].get('served', 0):.1%} (error {report['cache'].get('error_rate') or 0:.1%})")
    overhead = router_overhead(workspace, config, novel)
    print(f"router overhead, novel wordings never embedded before: p50 {overhead['p50_ms']} ms, p95 {overhead['p95_ms']} ms")
    name = "paraphrase" + (f"-rewordings{args.rewordings}" if args.rewordings else "")
    path = save_results(name, {"grouping": grouping, "table": table, "eval": figures, "overhead": overhead,
                               "max_error_rate": config.router.max_error_rate, "rewordings": args.rewordings,
                               "train_steps": args.max_steps})
    print(f"figures: {path}")


if __name__ == "__main__":
    main()
