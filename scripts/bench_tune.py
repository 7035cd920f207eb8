"""Does tuning the retriever on the traces pay? PolicyQA before/after, and a corpus it never saw.

    python scripts/bench_tune.py

1. Copies the PolicyQA workspace of bench_curate.py (traces, curation, index)
   to bench/tune-policyqa, so switching its retriever touches no other benchmark.
2. `tune_retriever` with the traffic's gold documents as held-out relevance: recall@1/@5 and MRR of
   the hybrid retriever before and after on the held-out recent week, how many of those questions
   were asked in a wording seen in training, and the tuning time on this CPU.
3. The extractive teacher's answer F1 against gold on the same held-out questions, before and after.
4. The COVID FAQ (not tuned on): each question, reworded, must retrieve its own FAQ entry among the
   762 (dense only); recall@1/@5 and MRR with the base MiniLM and with the tuned embedder.
Goal: recall@5 >= 0.70 on PolicyQA held-out (from about 0.51 for MiniLM off the shelf).
"""

from __future__ import annotations

import json
import re
import shutil
import time

import numpy as np

from distill.jobs.eval_sets import load_gold_rows
from distill.metrics import normalize_query, rank_scores
from distill.rag.embed import embed, load_embedder
from distill.rag.teacher import Teacher
from distill.rag.tune import tune_retriever
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from policyqa import ROOT, best_f1, save_results

FAQ = ROOT.parent / "shared" / "datasets" / "covid_faq_versions" / "faq_versions.jsonl"


def main() -> None:
    source = ROOT / "bench" / "curate-policyqa"
    if not (source / "traces" / "traces.duckdb").exists():
        raise SystemExit("run scripts/bench_curate.py and scripts/bench_student.py first")
    home = ROOT / "bench" / "tune-policyqa"
    shutil.rmtree(home, ignore_errors=True)
    (home / "traces").mkdir(parents=True)
    shutil.copy(source / "traces" / "traces.duckdb", home / "traces" / "traces.duckdb")
    shutil.copytree((source / "index").resolve(), home / "index")
    workspace = Workspace(home)
    config = workspace.config()
    gold = {row["query_id"]: row for row in load_gold_rows(ROOT / "bench" / "traffic" / "gold.jsonl")}

    held = held_out(workspace, gold)
    f1_before = teacher_f1(workspace, config, held)
    started = time.time()
    result = tune_retriever(workspace, config, gold=gold)
    print(f"tuned {result.version} on {result.pairs} triplets in {time.time() - started:.0f} s (training, re-embedding "
          f"the corpus, scoring); {result.reason}")
    print(f"  held-out: {result.held_out} questions with gold documents, {result.held_out_seen} asked in a wording "
          f"seen in training")
    for name, scores in (("before", result.before), ("after", result.after)):
        print(f"  {name:6s} recall@1 {scores['recall_at_1']:.3f}  recall@5 {scores['recall_at_5']:.3f}  "
              f"MRR {scores['mrr']:.3f}  (goal recall@5 >= 0.70)")
    f1_after = teacher_f1(Workspace(home), config, held) if result.switched else None
    print(f"  extractive teacher F1 vs gold on those questions: {f1_before:.3f} before"
          + (f", {f1_after:.3f} after" if f1_after is not None else " (not switched)"))
    covid = covid_recall(result.path) if FAQ.exists() else None
    if covid:
        for name, scores in covid.items():
            print(f"  COVID FAQ (never tuned on), {name:14s} recall@1 {scores['recall_at_1']:.3f}  "
                  f"recall@5 {scores['recall_at_5']:.3f}  MRR {scores['mrr']:.3f}")
    save_results("tune", {"pairs": result.pairs, "held_out": result.held_out, "held_out_seen": result.held_out_seen,
                          "before": result.before, "after": result.after, "switched": result.switched,
                          "seconds": round(time.time() - started), "teacher_f1_before": f1_before,
                          "teacher_f1_after": f1_after, "covid": covid})


def held_out(workspace: Workspace, gold: dict) -> list[dict]:
    with TraceStore(workspace.traces_db) as store:
        rows = [r for r in store.retrieval_examples() if r["held_out"] and r["query_id"] in gold]
    distinct = {(r["scope"], normalize_query(r["query"])): r for r in rows}
    return [{"query": r["query"], "scope": r["scope"], "gold": gold[r["query_id"]]["gold_answers"]}
            for r in distinct.values()]


def teacher_f1(workspace: Workspace, config, questions: list[dict]) -> float:
    teacher = Teacher.from_workspace(workspace, config)
    answers = teacher.answer_batch([(q["query"], q["scope"]) for q in questions])
    return round(float(np.mean([best_f1(a.answer, q["gold"]) for a, q in zip(answers, questions)])), 4)


def covid_recall(tuned_path) -> dict:
    rows = [json.loads(line) for line in FAQ.read_text().splitlines()]
    docs = [f"{r['question']}\n{r['versions'][0]['answer']}" for r in rows]  # version 1 of each entry
    queries = ["Can you tell me: " + re.sub(r"^Q:\s*", "", r["question"]).strip().lower() for r in rows]
    out = {}
    for name, model in (("base MiniLM", load_embedder("all-MiniLM-L6-v2")),
                        ("tuned", load_embedder(str(tuned_path)))):
        doc_vectors, query_vectors = embed(model, docs), embed(model, queries)
        order = np.argsort(-(query_vectors @ doc_vectors.T), axis=1)[:, :5]
        ranks = [next((k + 1 for k, j in enumerate(row) if j == n), None) for n, row in enumerate(order)]
        out[name] = rank_scores(ranks, "recall_at_5")
    return out


if __name__ == "__main__":
    main()
