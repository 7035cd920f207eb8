"""Does the corpus answer the question? The cheap signals, measured before one is built into the teacher.

    python scripts/bench_answerability.py

On StackFAQ (the corpus of scripts/bench_paraphrase.py, bench/paraphrase, built by that script):
in-scope questions are every thread's annotator rephrasings; out-of-scope ones are off-topic
questions and questions of the other shared datasets (PolicyQA, the COVID FAQ) asked of this
corpus. The extractive teacher answers each, as it would today, and for each answer these local
signals are kept:

- top: dense cosine of the best chunk; margin: its lead over the next chunk;
- bm25: the BM25 score of the best lexical hit;
- coverage: share of the question's content words (stop words aside) found in the cited chunk;
- sentence: the extractive answer sentence's own score.

Printed: the teacher's refusal rate today on out-of-scope questions and its answer rate and right-
document rate on in-scope ones; each signal's AUROC (in-scope vs out-of-scope) on the report half;
and a logistic combination of the signals fitted on the tune half (threads halved as in
scripts/stackfaq.py, out-of-scope questions alternately), with the threshold that answers 90 % of the
tune half's in-scope questions, applied to the report half. Figures go to bench/results/answerability.json.
"""

from __future__ import annotations

import time

import numpy as np

from distill.config import Workspace
from distill.corpus import cited_document
from distill.teacher import Teacher, words
from policyqa import ROOT, save_results
from stackfaq import OFF_TOPIC, SCOPE, load_threads, other_corpus_questions, split_threads

HOME = ROOT / "bench" / "paraphrase"
SIGNALS = ("top", "margin", "bm25", "coverage", "sentence")
STOP = set("a an the is are was were be been do does did i you he she it we they my your our their to of in on at for "
           "with by from and or not no can could should would will how what why when where which who whom this that "
           "there here have has had if then so as about into any some me us them".split())


def auroc(positive: list[float], negative: list[float]) -> float:
    """The chance a random in-scope question scores above a random out-of-scope one (ties count half)."""
    pos, neg = np.asarray(positive), np.asarray(negative)
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def signals(teacher: Teacher, questions: list[str]) -> list[dict]:
    rows = []
    for start in range(0, len(questions), 64):
        batch = questions[start:start + 64]
        for question, answer in zip(batch, teacher.answer_batch([(q, SCOPE) for q in batch])):
            retrieval = teacher.retriever.search(question, SCOPE)
            bm25 = max((h.bm25_score or 0.0 for h in retrieval.hits), default=0.0)
            content = {w for w in words(question) if w not in STOP}
            cited = " ".join(h.chunk["text"] for h in retrieval.hits if h.chunk["chunk_id"] in answer.citations[:1])
            chunk_words = set(words(cited)) if cited else set(words(retrieval.hits[0].chunk["text"])) if retrieval.hits else set()
            rows.append({"question": question, "refused": answer.refused, "doc": cited_document(answer.citations),
                         "top": answer.top_score or 0.0, "margin": answer.score_margin or 0.0, "bm25": bm25,
                         "coverage": len(content & chunk_words) / len(content) if content else 0.0,
                         "sentence": answer.answer_score or 0.0})
    return rows


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, mean, scale): L2-regularized logistic regression on standardized signals."""
    from scipy.optimize import minimize

    mean, scale = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])

    def loss(w):
        p = 1 / (1 + np.exp(-z @ w))
        return -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)) + 1e-3 * w[:-1] @ w[:-1]

    return minimize(loss, np.zeros(z.shape[1]), method="L-BFGS-B").x, mean, scale


def main() -> None:
    workspace = Workspace(HOME)
    if not (workspace.index_dir / "dense.json").exists():
        raise SystemExit("run scripts/bench_paraphrase.py first: it ingests StackFAQ into bench/paraphrase")
    threads = load_threads()
    halves = split_threads(threads)
    teacher = Teacher.from_workspace(workspace, workspace.config())
    inscope = [(r, t["thread"], t["doc_id"]) for t in threads for r in t["rephrasings"]]
    outside = OFF_TOPIC + other_corpus_questions(400)
    started = time.time()
    rows_in = signals(teacher, [q for q, _, _ in inscope])
    rows_out = signals(teacher, outside)
    seconds = time.time() - started
    for row, (_, thread, doc) in zip(rows_in, inscope):
        row.update(half="tune" if thread in halves["tune"] else "report", right_doc=row["doc"] == doc)
    for i, row in enumerate(rows_out):
        row["half"] = "tune" if i % 2 == 0 else "report"

    def part(rows, half):
        return [r for r in rows if r["half"] == half]

    figures: dict = {"in_scope": len(rows_in), "out_of_scope": len(rows_out),
                     "seconds_per_question": round(seconds / (len(rows_in) + len(rows_out)), 4)}
    for half in ("tune", "report"):
        ins, outs = part(rows_in, half), part(rows_out, half)
        figures[half] = {
            "teacher_today": {"out_of_scope_refused": round(np.mean([r["refused"] for r in outs]), 3),
                              "in_scope_answered": round(np.mean([not r["refused"] for r in ins]), 3),
                              "in_scope_right_document": round(np.mean([r["right_doc"] for r in ins]), 3)},
            "auroc": {s: round(auroc([r[s] for r in ins], [r[s] for r in outs]), 3) for s in SIGNALS}}
    x = lambda rows: np.array([[r[s] for s in SIGNALS] for r in rows])  # noqa: E731
    tune_in, tune_out = part(rows_in, "tune"), part(rows_out, "tune")
    weights, mean, scale = fit_logistic(np.vstack([x(tune_in), x(tune_out)]),
                                        np.r_[np.ones(len(tune_in)), np.zeros(len(tune_out))])

    def score(rows):
        return np.hstack([(x(rows) - mean) / scale, np.ones((len(rows), 1))]) @ weights

    threshold = float(np.quantile(score(tune_in), 0.10))  # answers 90 % of the tune half's in-scope questions
    report_in, report_out = part(rows_in, "report"), part(rows_out, "report")
    figures["combined"] = {"weights": dict(zip(SIGNALS + ("bias",), np.round(weights, 3).tolist())),
                           "auroc_report": round(auroc(score(report_in).tolist(), score(report_out).tolist()), 3),
                           "threshold_from_tune": round(threshold, 3),
                           "report_in_scope_answered": round(float(np.mean(score(report_in) >= threshold)), 3),
                           "report_out_of_scope_refused": round(float(np.mean(score(report_out) < threshold)), 3)}
    report = figures["report"]
    print(f"{len(rows_in)} in-scope rephrasings, {len(rows_out)} out-of-scope questions "
          f"({figures['seconds_per_question'] * 1000:.1f} ms each, teacher and signals)")
    print(f"teacher today (report half): out-of-scope refused {report['teacher_today']['out_of_scope_refused']:.1%}, "
          f"in-scope answered {report['teacher_today']['in_scope_answered']:.1%}, right document cited "
          f"{report['teacher_today']['in_scope_right_document']:.1%} (goals 80 %, 90 %, 70 %)")
    print("AUROC in-scope vs out-of-scope (report half): " +
          ", ".join(f"{s} {v:.3f}" for s, v in report["auroc"].items()) + " (goal 0.85)")
    combined = figures["combined"]
    print(f"logistic combination fitted on the tune half: AUROC {combined['auroc_report']:.3f} on the report half; "
          f"at the tune half's 90 %-answered threshold the report half answers {combined['report_in_scope_answered']:.1%} "
          f"of in-scope and refuses {combined['report_out_of_scope_refused']:.1%} of out-of-scope questions")
    print(f"figures: {save_results('answerability', figures)}")


if __name__ == "__main__":
    main()
