"""The router's coverage decision: which wordings the student may answer, under an error rate the user sets.

A student that only answers the exact strings it was trained on is a slow cache; one global cosine
threshold is wrong both ways (the similarity of right and wrong reuses overlaps, and the right
threshold differs per intent: vCache, Schroeder et al., ICLR 2026). So the decision is learned from
evidence the traces already hold, and bounded:

1. Evidence. Curation exports every wording asked before its cutoff (`coverage.json` beside the
   training set, copied into each student version) with what the teacher answered it from and with:
   the trained intents' wordings, and the untrained ones (rare questions, other needs) as rivals;
   with `curate.rewordings`, the verified rewordings too, as trained wordings (reword.py).
2. Score. A question's nearest trained intent has similarity `s1` (cosine to its closest wording);
   its rival has `s2` (the closest wording whose evidence does not agree with that intent's: another
   need). The score is `s1 + MARGIN_WEIGHT * (s1 - s2)`: near the intent and clearly nearer it than
   to anything else.
3. Evidence group. Whether the document RAG would read first for the question is the one the
   intent's answer came from splits questions in two groups, each with a threshold of its own.
4. Calibration. Every exported wording is scored leave-one-out (as if it were new) against the
   others, and labelled an error when its nearest intent's evidence disagrees with the teacher's own
   answer to it (another document and token F1 below `eval.success_f1`). A group's threshold is the
   lowest score at which the examples scoring at least that much have an expected error rate (the
   posterior mean, `expected_error`) of at most `router.max_error_rate`: selective risk control
   (Geifman and El-Yaniv, 2017). Too little evidence means no threshold: novel wordings go to RAG
   until the traces hold enough.
5. Per intent. An intent whose own calibration wordings erred above its group's threshold starts
   stricter (just above the worst one). At run time a shadow disagreement tightens the intent at
   once to just above the disagreeing question's score; each agreement loosens it by `LOOSEN` of
   the way back (vCache's per-entry thresholds, learned online).

A wording the student was trained on is always covered (its answer is the teacher's agreed answer
for it); the decision is about the others.

    decision = Decision(calibration, embed, max_error_rate=0.02, min_similarity=0.5, evidence_doc=rag_top_document)
    decision.assess(embed(["how do i strike out text on github"])[0], "webapps", "how do i strike out text on github")
               same_evidence=True, risk=0.011)
"""

from __future__ import annotations

import bisect
import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from distill.errors import DistillError
from distill.metrics import normalize_query, token_f1
from distill.store.schema import current_fields

COVERAGE_FILE = "coverage.json"  # the evidence the decision is calibrated on
MARGIN_WEIGHT = 1.0  # chosen on StackFAQ's tune half of threads (scripts/bench_paraphrase.py)
LOOSEN = 0.1  # share of the way back to the group thresholds that one shadow agreement moves an intent
RIVALS = 32  # nearest wordings searched for a rival
TIGHTEN = 1e-6  # how far above a wrong answer's score an intent's threshold moves


@dataclass
class Assessment:
    intent_id: str | None
    similarity: float  # s1: cosine to the nearest trained wording
    rival: float  # s2: cosine to the nearest wording of another need
    score: float
    threshold: float  # the intent's threshold now (inf: none)
    seen: bool  # the question is one of the intent's trained wordings
    same_evidence: bool | None  # RAG's best document for the question is the one the intent's answer came from
    risk: float | None  # the expected error of the group's calibration examples scoring at least this much

    @property
    def covered(self) -> bool:
        return self.intent_id is not None and (self.seen or self.score >= self.threshold)


def agrees(a: dict, b: dict, success_f1: float) -> bool:
    """Two pieces of evidence ({doc, answer, refused}) give the same answer: both refusals, or the
    same document, or answers at token F1 of at least `success_f1`."""
    if a["refused"] or b["refused"]:
        return bool(a["refused"] and b["refused"])
    return a["doc"] == b["doc"] or token_f1(a["answer"], b["answer"]) >= success_f1


def expected_error(errors: int, n: int) -> float:
    """The expected error rate after `errors` wrong in `n`, under a uniform prior (the posterior
    mean, Laplace's rule): 0 of 48 -> 0.02, 1 of 98 -> 0.02. Unlike the raw rate it is never 0 on
    little evidence, so a handful of lucky examples cannot open an intent to novel wordings."""
    return (errors + 1) / (n + 2)


def risk_curve(scores: list[float], errors: list[bool]) -> list[tuple[float, float]]:
    """(score, expected error of every example scoring at least that), best score first."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    curve, wrong = [], 0
    for k, i in enumerate(order, 1):
        wrong += bool(errors[i])
        curve.append((float(scores[i]), expected_error(wrong, k)))
    return curve


def threshold_at(curve: list[tuple[float, float]], max_error_rate: float) -> float:
    """The lowest score whose served set has an expected error within `max_error_rate` (inf: none)."""
    return min((score for score, expected in curve if expected <= max_error_rate), default=float("inf"))


class Decision:
    """The coverage decision over one student's calibration evidence (see the module docstring).
    Thread-safe: shadow checks tighten and loosen intents while requests are assessed."""

    def __init__(self, calibration: dict, embed, max_error_rate: float, min_similarity: float, evidence_doc=None):
        """`embed(texts)` gives unit vectors (the router's query embedder); `evidence_doc(text,
        scope, vector)` the document RAG would read first for a question (None: not used)."""
        import faiss

        self.max_error_rate, self.min_similarity, self.evidence_doc = max_error_rate, min_similarity, evidence_doc
        self.success_f1 = calibration.get("success_f1", 0.5)
        self.intents: dict[str, dict] = calibration.get("intents", {})
        self.rows: list[dict] = calibration.get("wordings", [])
        self.trained: dict[tuple, str] = {(r["scope"] or "", r["wording"]): r["intent_id"]
                                          for r in self.rows if r.get("intent_id")}
        vectors = (embed([r.get("text") or r["wording"] for r in self.rows]).astype(np.float32) if self.rows
                   else np.zeros((0, 1), np.float32))
        self.by_scope: dict[str, tuple] = {}
        for scope in {r["scope"] or "" for r in self.rows}:
            members = [i for i, r in enumerate(self.rows) if (r["scope"] or "") == scope]
            trained = [i for i in members if self.rows[i].get("intent_id")
                       and not self.intents.get(self.rows[i]["intent_id"], {}).get("refused")]
            every = faiss.IndexFlatIP(vectors.shape[1])
            every.add(vectors[members])
            nearest = faiss.IndexFlatIP(vectors.shape[1])
            if trained:
                nearest.add(vectors[trained])
            self.by_scope[scope] = (nearest, trained, every, members)
        self._agree = lru_cache(maxsize=200_000)(self._agrees)
        self._lock = threading.Lock()
        self.examples = self._examples(vectors)
        self.curves = {group: risk_curve([e["score"] for e in self.examples if e["same_evidence"] == group],
                                         [e["error"] for e in self.examples if e["same_evidence"] == group])
                       for group in (True, False, None)}
        self._at_rate: dict[float, dict] = {}  # the group thresholds at each error rate asked for
        self.group_thresholds = self._group_thresholds(max_error_rate)
        self.thresholds: dict[str, float] = {}  # intents stricter than their group, by calibration or shadow checks
        for example in self.examples:  # an intent whose own evidence erred above its threshold starts stricter
            if example["error"] and example["score"] >= self.group_thresholds[example["same_evidence"]]:
                cid = example["intent_id"]
                self.thresholds[cid] = max(self.thresholds.get(cid, 0.0), example["score"] + TIGHTEN)

    def _group_thresholds(self, max_error_rate: float) -> dict:
        """A threshold per group of questions (RAG's best document the intent's own, or not), each
        bounding its group's expected error, so the error rate over both stays within the bound too."""
        if max_error_rate not in self._at_rate:
            self._at_rate[max_error_rate] = {group: threshold_at(curve, max_error_rate)
                                             for group, curve in self.curves.items()}
        return self._at_rate[max_error_rate]

    @classmethod
    def load(cls, folder: Path | None, manifest: dict, embed, max_error_rate: float, min_similarity: float,
             evidence_doc=None) -> "Decision":
        """A student version's decision; a version trained before calibration existed gets its
        trained wordings only (novel wordings go to RAG)."""
        path = next((Path(folder) / name for name in (COVERAGE_FILE, "calibration.json")  # its name before #25
                     if (Path(folder) / name).exists()), None) if folder else None
        if path:
            try:
                calibration = json.loads(path.read_text())
            except json.JSONDecodeError:
                raise DistillError(f"{path} is corrupted; retrain the student with `distill nightly`") from None
            calibration["wordings"] = [current_fields(row) for row in calibration.get("wordings", [])]
        else:
            calibration = {"intents": {c["intent_id"]: {"doc": None, "answer": "", "refused": False}
                                       for c in manifest.get("intents", [])},
                           "wordings": [{"scope": c.get("scope") or "", "wording": normalize_query(w), "text": w,
                                         "intent_id": c["intent_id"]}
                                        for c in manifest.get("intents", []) for w in c.get("wordings", [])]}
        return cls(calibration, embed, max_error_rate, min_similarity, evidence_doc)

    # -- scoring -----------------------------------------------------------------------------------

    def _agrees(self, intent_id: str, row: int) -> bool:
        found = self.rows[row]
        if found.get("intent_id") == intent_id:
            return True
        if "doc" not in found:
            return False
        return agrees(self.intents[intent_id], found, self.success_f1)

    def _nearest(self, vector: np.ndarray, scope: str, skip: frozenset = frozenset()) -> tuple[str | None, float]:
        nearest, trained, _, _ = self.by_scope[scope]
        if not trained:
            return None, 0.0
        scores, ids = nearest.search(vector.reshape(1, -1), min(len(skip) + 1, len(trained)))
        for score, i in zip(scores[0], ids[0]):
            if i >= 0 and trained[i] not in skip:
                return self.rows[trained[i]]["intent_id"], float(score)
        return None, 0.0

    def _rival(self, vector: np.ndarray, scope: str, intent_id: str, skip: frozenset = frozenset()) -> float:
        _, _, every, members = self.by_scope[scope]
        scores, ids = every.search(vector.reshape(1, -1), min(RIVALS, len(members)))
        last = 0.0
        for score, i in zip(scores[0], ids[0]):
            if i < 0:
                break
            last = float(score)
            row = members[i]
            if row not in skip and not self._agree(intent_id, row):
                return float(score)
        return last if len(members) > RIVALS else 0.0

    def _same_evidence(self, text: str, scope: str, vector: np.ndarray, intent_id: str) -> bool | None:
        if self.evidence_doc is None or not self.intents[intent_id].get("doc"):
            return None
        return self.intents[intent_id]["doc"] in self.evidence_doc(text, scope or None, vector)

    def _score(self, similarity: float, rival: float) -> float:
        return similarity + MARGIN_WEIGHT * (similarity - rival)

    def _examples(self, vectors: np.ndarray) -> list[dict]:
        """Every asked wording with evidence, scored leave-one-out (without itself and the rewordings
        written from it), with its error label. Rewordings are never examples: people did not ask them."""
        written: dict[tuple, list[int]] = {}
        for i, row in enumerate(self.rows):
            if row.get("written_from"):
                written.setdefault((row["scope"] or "", row["written_from"]), []).append(i)
        examples = []
        for i, row in enumerate(self.rows):
            if "doc" not in row or row.get("written_from"):
                continue
            scope = row["scope"] or ""
            skip = frozenset([i, *written.get((scope, row["wording"]), [])])
            intent_id, similarity = self._nearest(vectors[i], scope, skip=skip)
            if intent_id is None:
                continue
            rival = self._rival(vectors[i], scope, intent_id, skip=skip)
            examples.append({"row": i, "intent_id": intent_id, "similarity": similarity, "rival": rival,
                             "score": self._score(similarity, rival),
                             "same_evidence": self._same_evidence(row.get("text") or row["wording"], scope, vectors[i],
                                                                  intent_id),
                             "error": not agrees(self.intents[intent_id], row, self.success_f1)})
        return examples

    def assess(self, vector: np.ndarray, scope: str | None, wording: str, text: str | None = None) -> Assessment:
        """Where a question (its unit vector, scope, normalized wording and text) stands."""
        scope = scope or ""
        vector = vector.astype(np.float32)
        intent_id, similarity = self._nearest(vector, scope) if scope in self.by_scope else (None, 0.0)
        if intent_id is None:
            return Assessment(None, 0.0, 0.0, 0.0, float("inf"), False, None, None)
        seen = self.trained.get((scope, wording)) == intent_id
        rival = self._rival(vector, scope, intent_id)
        score = self._score(similarity, rival)
        same = None if seen or similarity < self.min_similarity else \
            self._same_evidence(text or wording, scope, vector, intent_id)
        threshold = self.threshold(intent_id, same) if similarity >= self.min_similarity else float("inf")
        return Assessment(intent_id, round(similarity, 4), round(rival, 4), round(score, 4), threshold, seen, same,
                          self.risk(score, same))

    def covers(self, found: Assessment, max_error_rate: float | None = None) -> bool:
        """`found.covered`, at another error rate (an evaluation sweeps it)."""
        if found.intent_id is None or found.seen:
            return found.intent_id is not None
        return found.similarity >= self.min_similarity and \
            found.score >= self.threshold(found.intent_id, found.same_evidence, max_error_rate)

    def threshold(self, intent_id: str, same_evidence: bool | None, max_error_rate: float | None = None) -> float:
        """The intent's threshold now for a question of this group; with `max_error_rate`, the group's
        threshold at that rate instead of the configured one (an evaluation sweeps it)."""
        group = (self.group_thresholds if max_error_rate is None else self._group_thresholds(max_error_rate))[same_evidence]
        with self._lock:
            return max(group, self.thresholds.get(intent_id, group))

    @property
    def global_threshold(self) -> float:
        """The lowest group threshold: below it no novel wording is served."""
        return min(self.group_thresholds.values())

    def risk(self, score: float, same_evidence: bool | None) -> float | None:
        """The expected error of the group's calibration examples scoring at least `score` (None: none do)."""
        curve = self.curves.get(same_evidence, [])
        k = bisect.bisect_right([-s for s, _ in curve], -score)
        return round(curve[k - 1][1], 4) if k else None

    # -- learning online ----------------------------------------------------------------------------

    def disagreed(self, intent_id: str, score: float) -> None:
        """A shadow check found the intent's answer wrong for a question scoring `score`: from now
        on, only questions scoring above it are served for this intent."""
        with self._lock:
            self.thresholds[intent_id] = max(self.thresholds.get(intent_id, 0.0), score + TIGHTEN)

    def agreed(self, intent_id: str) -> None:
        """A shadow check agreed: move the intent's own threshold `LOOSEN` of the way back to the
        lowest group threshold (it never goes below a group's: those bound the error)."""
        with self._lock:
            current = self.thresholds.get(intent_id)
            if current is not None and current > self.global_threshold:
                self.thresholds[intent_id] = current - LOOSEN * (current - self.global_threshold)

    def summary(self) -> dict:
        """What the decision rests on, for /health, the eval report and `distill ask --explain`."""
        def finite(value: float) -> float | None:
            return None if value == float("inf") else round(value, 4)

        covered = [e for e in self.examples if e["score"] >= self.group_thresholds[e["same_evidence"]]]
        return {"max_error_rate": self.max_error_rate, "examples": len(self.examples),
                "errors": sum(e["error"] for e in self.examples),
                "thresholds": {("same_evidence" if g else "other_evidence" if g is False else "no_evidence_check"): finite(t)
                               for g, t in self.group_thresholds.items()
                               if any(e["same_evidence"] == g for e in self.examples)},
                "examples_covered": len(covered), "errors_covered": sum(e["error"] for e in covered),
                "stricter_intents": len(self.thresholds)}


def export_coverage_evidence(path: Path, intents: dict[str, dict], wordings: list[dict], success_f1: float) -> None:
    """Write the evidence a `Decision` is built from (curation calls this beside the training set):
    `intents` {intent_id: {doc, answer, refused}}, `wordings` [{scope, wording (normalized), text,
    intent_id (trained wordings only), doc, answer, refused, written_from (verified rewordings only:
    the asked wording an LLM rewrote)}]."""
    path.write_text(json.dumps({"success_f1": success_f1, "intents": intents, "wordings": wordings}))
