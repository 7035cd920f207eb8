"""Does the teacher refuse what its documents do not answer, and answer what they do?

    python scripts/bench_answerability.py [--llm 40]

Three workspaces, built here on first run (bench/answerability/):

- `stackfaq`: the 125 StackFAQ threads. In scope: every annotator rephrasing. Out of scope: off-topic
  questions and the other shared datasets' questions (PolicyQA, the COVID FAQ) asked of it.
- `stackfaq-partial`: the same corpus without every third thread. In scope: the rephrasings of the
  threads it keeps. Out of scope: the rephrasings of the withheld threads (same site, same style:
  the hard case) and the off-topic and other-dataset questions.
- `policyqa`: the 20 PolicyQA websites, each its own scope. In scope: each website's questions
  asked of it. Out of scope: off-topic questions and StackFAQ rephrasings asked of a website; and,
  reported apart because its labels are noisy, questions asked of another website that the dataset
  never asks of that one (policies answer many of the same questions).

Questions are halved: StackFAQ by thread (scripts/stackfaq.py), PolicyQA by website
(scripts/policyqa.py), out-of-scope questions alternately. On the tune halves this script fits the
logistic weights of the answerability score (the values in `distill/answerability.py` came from
here) and the uncalibrated default threshold (the 5th percentile of the tune halves' in-scope
scores, StackFAQ and PolicyQA pooled: `teacher.min_answerability`). Each workspace's threshold is
then fitted the way `distill collect` fits it, from the tune half's questions, in-scope and out of
scope mixed as traffic, and every figure is read on the report half: out of scope refused, in
scope answered, right document cited, the AUROC of the score, and the p50 cost of the check.
`--llm N` also asks SmolLM2 (the transformers backend, on this CPU) N in-scope and N out-of-scope
report-half questions of `stackfaq-partial`, to count what its own refusals add. Figures go to
bench/results/answerability.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from distill import answerability
from distill.config import Workspace
from distill.corpus import cited_document
from distill.index import ingest
from distill.teacher import Teacher, Retrieval, select_evidence, words
from policyqa import ROOT, require_policyqa, save_results, split_pairs
from stackfaq import OFF_TOPIC, SCOPE, load_threads, other_corpus_questions, split_threads, write_corpus

HOME = ROOT / "bench" / "answerability"
SIGNALS = ("top", "sentence", "coverage")


def auroc(positive: list[float], negative: list[float]) -> float:
    """The chance a random in-scope question scores above a random out-of-scope one (ties count half)."""
    pos, neg = np.asarray(positive), np.asarray(negative)
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(weights, bias) on the raw signals: L2-regularized logistic regression fitted on standardized ones."""
    from scipy.optimize import minimize

    mean, scale = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])

    def loss(w):
        p = 1 / (1 + np.exp(-z @ w))
        return -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)) + 1e-3 * w[:-1] @ w[:-1]

    w = minimize(loss, np.zeros(z.shape[1]), method="L-BFGS-B").x
    return w[:-1] / scale, float(w[-1] - (w[:-1] * mean / scale).sum())


def workspace(name: str, build) -> Workspace:
    ws = Workspace(HOME / name)
    if not (ws.index_dir / "dense.json").exists():
        print(f"ingesting {name} ...")
        build(ws)
    return ws


def measure(teacher: Teacher, items: list[dict]) -> list[dict]:
    """Each item ({query, scope, ...}) with its signals, score, first cited document and whether it
    was refused before the score is looked at (no evidence, or top cosine under teacher.min_top_score)."""
    teacher.threshold = 0.0  # every answer is generated; the threshold is applied afterwards
    for start in range(0, len(items), 64):
        batch = items[start:start + 64]
        for item, answer in zip(batch, teacher.answer_batch([(i["query"], i["scope"]) for i in batch])):
            item.update(score=answer.answerability or 0.0, early_refusal=answer.refused, doc=cited_document(answer.citations))
        vectors = teacher.retriever.embed_queries([i["query"] for i in batch])
        for item, vector in zip(batch, vectors):  # the signals apart, and the cost of the check alone
            retrieval: Retrieval = teacher.retriever.search(item["query"], item["scope"], query_vector=vector)
            evidence = select_evidence(retrieval, teacher.config)
            began = time.perf_counter()
            teacher.answerability(retrieval, evidence, vector)
            item["check_ms"] = (time.perf_counter() - began) * 1000
            asked = answerability.content_words(words(item["query"]))
            best = set(words(f"{evidence[0].get('heading') or ''} {evidence[0]['text']}")) if evidence else set()
            item.update(top=max((h.dense_score for h in retrieval.hits), default=0.0),
                        sentence=max((s for s, _ in teacher.sentences.scored(evidence, vector)), default=0.0),
                        coverage=len(asked & best) / len(asked) if asked else 0.0)
    return items


def corpora() -> dict[str, dict]:
    threads = load_threads()
    halves = split_threads(threads)
    withheld = {t["thread"] for t in threads if t["thread"] % 3 == 0}
    outside = OFF_TOPIC + other_corpus_questions(400)
    rng = random.Random(0)

    def stackfaq_items(kept: set[int]) -> list[dict]:
        items = [{"query": r, "scope": SCOPE, "kind": "in_scope" if t["thread"] in kept else "withheld_thread",
                  "gold_docs": [t["doc_id"]], "half": "tune" if t["thread"] in halves["tune"] else "report"}
                 for t in threads for r in t["rephrasings"]]
        return items + [{"query": q, "scope": SCOPE, "kind": "off_topic_or_other_dataset", "gold_docs": [],
                         "half": "tune" if i % 2 == 0 else "report"} for i, q in enumerate(outside)]

    full = workspace("stackfaq", lambda ws: ingest(ws, write_corpus(threads, ws.home / "corpus.jsonl"), ws.config()))
    partial = workspace("stackfaq-partial", lambda ws: ingest(
        ws, write_corpus([t for t in threads if t["thread"] not in withheld], ws.home / "corpus.jsonl"), ws.config()))
    policy = workspace("policyqa", lambda ws: ingest(ws, require_policyqa(), ws.config(), fmt="squad"))
    pairs = split_pairs()
    asked_of = {(p["scope"], p["query"]) for half in pairs.values() for p in half}
    rephrasings = [r for t in threads for r in t["rephrasings"]]
    rng.shuffle(rephrasings)
    policy_items = []
    for half, items in pairs.items():
        sites = sorted({p["scope"] for p in items})
        policy_items += [{"query": p["query"], "scope": p["scope"], "kind": "in_scope", "gold_docs": sorted(p["gold_doc_ids"]),
                          "half": half} for p in items]
        foreign = rephrasings[:200] if half == "tune" else rephrasings[200:400]
        policy_items += [{"query": q, "scope": rng.choice(sites), "kind": "off_topic_or_other_dataset", "gold_docs": [],
                          "half": half} for q in OFF_TOPIC + foreign]
        questions = sorted({p["query"] for p in items})
        for q in rng.sample(questions, 120):
            others = [s for s in sites if (s, q) not in asked_of]
            if others:
                policy_items.append({"query": q, "scope": rng.choice(others), "kind": "other_website_noisy",
                                     "gold_docs": [], "half": half})
    everything = stackfaq_items({t["thread"] for t in threads})
    return {"stackfaq": {"workspace": full, "items": [i for i in everything if i["kind"] != "withheld_thread"]},
            "stackfaq-partial": {"workspace": partial,
                                 "items": stackfaq_items({t["thread"] for t in threads} - withheld)},
            "policyqa": {"workspace": policy, "items": policy_items}}


def rates(items: list[dict], threshold: float) -> dict:
    ins = [i for i in items if i["kind"] == "in_scope"]
    answered = [i for i in ins if not i["early_refusal"] and i["score"] >= threshold]
    figures = {"in_scope": len(ins), "in_scope_answered": round(len(answered) / len(ins), 3),
               "right_document_of_in_scope": round(sum(i["doc"] in i["gold_docs"] for i in answered) / len(ins), 3)}
    for kind in sorted({i["kind"] for i in items} - {"in_scope"}):
        outs = [i for i in items if i["kind"] == kind]
        figures[f"{kind}_refused"] = round(np.mean([i["early_refusal"] or i["score"] < threshold for i in outs]), 3)
    headline = [i for i in items if i["kind"] in ("off_topic_or_other_dataset", "withheld_thread")]
    figures["out_of_scope_refused"] = round(np.mean([i["early_refusal"] or i["score"] < threshold for i in headline]), 3)
    return figures


def llm_check(ws: Workspace, items: list[dict], threshold: float, n: int) -> dict:
    """SmolLM2 answers n in-scope and n out-of-scope report-half questions behind the calibrated threshold."""
    config = ws.config({"teacher": {"backend": "transformers"}})
    teacher = Teacher.from_workspace(ws, config)
    teacher.threshold = threshold
    rng = random.Random(1)
    report = [i for i in items if i["half"] == "report"]
    chosen = rng.sample([i for i in report if i["kind"] == "in_scope"], n) + \
        rng.sample([i for i in report if i["kind"] != "in_scope"], n)
    began = time.time()
    answers = [teacher.answer(i["query"], i["scope"]) for i in chosen]
    reasons = [a.refusal_reason for a in answers]
    ins, outs = answers[:n], answers[n:]
    return {"questions": 2 * n, "seconds": round(time.time() - began), "threshold": round(threshold, 4),
            "in_scope_answered": round(np.mean([not a.refused for a in ins]), 3),
            "in_scope_right_document": round(np.mean([cited_document(a.citations) in i["gold_docs"]
                                                      for a, i in zip(ins, chosen[:n])]), 3),
            "out_of_scope_refused": round(np.mean([a.refused for a in outs]), 3),
            "out_of_scope_refused_by_the_score": round(np.mean([r == "not_answerable" for r in reasons[n:]]), 3),
            "refused_by_the_model_itself": sum(r in ("model_declined", "ungrounded_answer") for r in reasons)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", type=int, default=0, help="questions of each kind for the SmolLM2 teacher (0: skip)")
    args = parser.parse_args()
    sets = corpora()
    started = time.time()
    for name, entry in sets.items():
        print(f"answering {len(entry['items'])} questions of {name} ...")
        entry["teacher"] = Teacher.from_workspace(entry["workspace"], entry["workspace"].config())
        measure(entry["teacher"], entry["items"])
    questions = sum(len(e["items"]) for e in sets.values())

    def x(items):
        return np.array([[i[s] for s in SIGNALS] for i in items])

    fit_on = [i for name in ("stackfaq", "stackfaq-partial") for i in sets[name]["items"] if i["half"] == "tune"]
    weights, bias = fit_logistic(x(fit_on), np.array([i["kind"] == "in_scope" for i in fit_on], dtype=float))
    pooled_in = [i["score"] for name in ("stackfaq", "policyqa") for i in sets[name]["items"]
                 if i["half"] == "tune" and i["kind"] == "in_scope"]
    figures: dict = {
        "questions": questions, "seconds": round(time.time() - started),
        "fitted_on_tune_halves": {"weights": dict(zip(SIGNALS, np.round(weights, 2).tolist())), "bias": round(bias, 2),
                                  "in_use": {**answerability.WEIGHTS, "bias": answerability.BIAS},
                                  "default_threshold_5th_percentile": round(float(np.quantile(pooled_in, 0.05)), 4),
                                  "default_in_use": sets["stackfaq"]["workspace"].config().teacher.min_answerability}}
    default = figures["fitted_on_tune_halves"]["default_in_use"]
    for name, entry in sets.items():
        items = entry["items"]
        tune, report = [i for i in items if i["half"] == "tune"], [i for i in items if i["half"] == "report"]
        calibration = answerability.fit_threshold([i["score"] for i in tune], default)
        ins = [i["score"] for i in report if i["kind"] == "in_scope"]
        outs = [i["score"] for i in report if i["kind"] in ("off_topic_or_other_dataset", "withheld_thread")]
        figures[name] = {
            "calibration": {"threshold": round(calibration.threshold, 4), "method": calibration.method,
                            "fitted_on": calibration.scores},
            "report_calibrated": rates(report, calibration.threshold),
            "report_default_threshold": rates(report, default),
            "report_before_answerability": rates(report, 0.0),
            "auroc_report": round(auroc(ins, outs), 3),
            "auroc_report_by_signal": {s: round(auroc([i[s] for i in report if i["kind"] == "in_scope"],
                                                      [i[s] for i in report if i["kind"] in
                                                       ("off_topic_or_other_dataset", "withheld_thread")]), 3)
                                       for s in SIGNALS},
            "check_ms_p50": round(float(np.median([i["check_ms"] for i in items])), 3),
            "check_ms_p95": round(float(np.quantile([i["check_ms"] for i in items], 0.95)), 3)}
        if args.llm and name == "stackfaq-partial":
            print(f"asking SmolLM2 {2 * args.llm} questions ...")
            figures[name]["transformers_backend"] = llm_check(entry["workspace"], items, calibration.threshold, args.llm)
    for name in sets:
        f = figures[name]
        c, d, b = f["report_calibrated"], f["report_default_threshold"], f["report_before_answerability"]
        print(f"{name}: threshold {f['calibration']['threshold']:.3f} ({f['calibration']['method']}); report half: "
              f"out of scope refused {c['out_of_scope_refused']:.1%} (default threshold {d['out_of_scope_refused']:.1%}, "
              f"before {b['out_of_scope_refused']:.1%}), in scope answered {c['in_scope_answered']:.1%} "
              f"(before {b['in_scope_answered']:.1%}), right document {c['right_document_of_in_scope']:.1%}; "
              f"AUROC {f['auroc_report']:.3f}; check p50 {f['check_ms_p50']:.2f} ms")
        extra = {k: v for k, v in c.items() if k.endswith("_refused") and k != "out_of_scope_refused"}
        print(f"   by kind (calibrated): {json.dumps(extra)}")
        if "transformers_backend" in f:
            print(f"   SmolLM2 teacher: {json.dumps(f['transformers_backend'])}")
    fit = figures["fitted_on_tune_halves"]
    print(f"weights fitted on the StackFAQ tune halves: {fit['weights']} bias {fit['bias']} (in use: {fit['in_use']}); "
          f"5th percentile of pooled tune in-scope scores {fit['default_threshold_5th_percentile']} "
          f"(teacher.min_answerability {fit['default_in_use']})")
    print(f"figures: {save_results('answerability', figures)}")


if __name__ == "__main__":
    main()
