"""The coverage decision on synthetic evidence: unit vectors built by hand, so every similarity is known."""

import numpy as np
import pytest

from distill.learn.coverage import Decision, agrees, expected_error, risk_curve, threshold_at

DIM = 48


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


class Space:
    """Texts of the form 'intent-K wording-J' map to the intent's direction plus per-wording noise of
    about norm `noise` (0.6: two wordings of one intent at cosine about 0.74)."""

    def __init__(self, intents: int, noise: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.directions = [unit(rng.normal(size=DIM)) for _ in range(intents)]
        self.noise, self.rng, self.cache = noise, rng, {}

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            if text not in self.cache:
                if text.startswith("intent-"):
                    k = int(text.split()[0].split("-")[1])
                    self.cache[text] = unit(self.directions[k] + self.noise * self.rng.normal(size=DIM) / DIM ** 0.5)
                else:  # anything else points somewhere of its own
                    self.cache[text] = unit(self.rng.normal(size=DIM))
            out.append(self.cache[text])
        return np.stack(out)


def calibration(intents: int, wordings: int, wrong: set[int] = frozenset()) -> dict:
    """Each intent trained on `wordings` wordings answered from its own document; for the intents in
    `wrong`, the student's agreed answer is another document's (the teacher answered each wording
    from the right one), so every one of its wordings is evidence of an error."""
    rows = []
    for k in range(intents):
        for j in range(wordings):
            rows.append({"scope": "s", "wording": f"intent-{k} wording-{j}", "text": f"intent-{k} wording-{j}",
                         "intent_id": f"c{k}", "doc": f"doc-{k}", "answer": f"answer {k}", "refused": False})
    return {"success_f1": 0.5, "wordings": rows,
            "intents": {f"c{k}": {"doc": f"doc-{(k + 1) % intents}" if k in wrong else f"doc-{k}",
                                  "answer": "some other need entirely" if k in wrong else f"answer {k}", "refused": False}
                        for k in range(intents)}}


def test_the_expected_error_and_the_threshold_it_selects():
    assert expected_error(0, 48) == pytest.approx(0.02) and expected_error(1, 98) == pytest.approx(0.02)
    curve = risk_curve([0.6, 0.9, 0.8, 0.7], [True, False, False, False])
    assert [score for score, _ in curve] == [0.9, 0.8, 0.7, 0.6]
    assert [round(e, 3) for _, e in curve] == [0.333, 0.25, 0.2, 0.333]
    assert threshold_at(curve, 0.25) == 0.7 and threshold_at(curve, 0.2) == 0.7 and threshold_at(curve, 0.1) == float("inf")
    assert threshold_at(risk_curve([0.9], [True]), 0.02) == float("inf")  # no evidence is no threshold
    assert agrees({"doc": "a", "answer": "x", "refused": False}, {"doc": "a", "answer": "y", "refused": False}, 0.5)
    assert not agrees({"doc": "a", "answer": "x", "refused": False}, {"doc": "b", "answer": "y", "refused": False}, 0.5)
    assert agrees({"doc": "a", "answer": "the refund takes 14 days", "refused": False},
                  {"doc": "b", "answer": "a refund takes 14 days", "refused": False}, 0.5)


def test_a_novel_wording_of_a_trained_intent_is_served_once_the_evidence_allows_it():
    space = Space(intents=40, noise=0.6)
    decision = Decision(calibration(40, 3), space.embed, max_error_rate=0.05, min_similarity=0.5)
    assert decision.summary()["errors"] == 0 and decision.global_threshold < float("inf")
    novel = space.embed(["intent-7 wording-new"])[0]
    found = decision.assess(novel, "s", "intent-7 wording-new")
    assert found.intent_id == "c7" and not found.seen and found.covered and found.risk <= 0.05
    trained = decision.assess(space.embed(["intent-7 wording-0"])[0], "s", "intent-7 wording-0")
    assert trained.seen and trained.covered
    # with too little evidence for the bound (10 examples cannot show 1 %), novel wordings go to RAG
    small = Space(intents=5, noise=0.6)
    strict = Decision(calibration(5, 2), small.embed, max_error_rate=0.01, min_similarity=0.5)
    assert strict.global_threshold == float("inf")
    assert not strict.assess(small.embed(["intent-1 wording-new"])[0], "s", "intent-1 wording-new").covered
    assert strict.assess(small.embed(["intent-1 wording-0"])[0], "s", "intent-1 wording-0").covered  # trained


def test_a_question_near_no_intent_goes_to_rag():
    space = Space(intents=40, noise=0.6)
    decision = Decision(calibration(40, 3), space.embed, max_error_rate=0.05, min_similarity=0.5)
    found = decision.assess(space.embed(["what is the capital of australia"])[0], "s", "what is the capital of australia")
    assert found.similarity < 0.5 and not found.covered
    assert not decision.assess(space.embed(["intent-1 wording-new"])[0], "other scope", "x").covered


def test_the_expected_error_holds_on_novel_wordings_when_some_intents_are_wrong():
    """10 of 60 intents give another document's answer: the calibration sees it in their own wordings
    (leave-one-out), and the served error on fresh wordings stays within the bound."""
    wrong = set(range(0, 60, 6))
    space = Space(intents=60, noise=0.9, seed=1)
    decision = Decision(calibration(60, 4, wrong), space.embed, max_error_rate=0.05, min_similarity=0.3)
    served = errors = 0
    for k in range(60):
        for j in range(5):
            text = f"intent-{k} novel-{j}"
            if decision.assess(space.embed([text])[0], "s", text).covered:
                served += 1
                errors += k in wrong
    assert served >= 100  # the right intents are served in words never seen
    assert errors / served <= 0.05
    # intents whose own evidence erred above the threshold start stricter, and only wrong ones do
    assert decision.thresholds and set(decision.thresholds) <= {f"c{k}" for k in wrong}


def test_shadow_disagreement_tightens_an_intent_at_once_and_agreement_loosens_it_slowly():
    space = Space(intents=40, noise=0.6)
    decision = Decision(calibration(40, 3), space.embed, max_error_rate=0.05, min_similarity=0.5)
    text = "intent-3 wording-new"
    found = decision.assess(space.embed([text])[0], "s", text)
    assert found.covered
    decision.disagreed("c3", found.score)
    again = decision.assess(space.embed([text])[0], "s", text)
    assert not again.covered and again.threshold > found.score
    other = decision.assess(space.embed(["intent-4 wording-new"])[0], "s", "intent-4 wording-new")
    assert other.covered  # only that intent tightened
    before = decision.thresholds["c3"]
    decision.agreed("c3")
    assert decision.global_threshold < decision.thresholds["c3"] < before
    assert decision.thresholds["c3"] > before - 0.5 * (before - decision.global_threshold)  # slowly


def test_rewordings_are_trained_wordings_but_never_calibration_evidence_for_their_own_source():
    """A verified rewording (here: a copy of a real wording's vector) widens its intent, but the
    real wording it was written from is still scored leave-one-out without it, and it is never an
    example itself: people did not ask it."""
    space = Space(intents=40, noise=0.6)
    plain = Decision(calibration(40, 3), space.embed, max_error_rate=0.05, min_similarity=0.5)
    evidence = calibration(40, 3)
    evidence["wordings"] += [{"scope": "s", "wording": f"rewording of {k}", "text": f"intent-{k} wording-0",
                              "intent_id": f"c{k}", "doc": f"doc-{k}", "answer": f"answer {k}", "refused": False,
                              "written_from": f"intent-{k} wording-0"} for k in range(40)]
    widened = Decision(evidence, space.embed, max_error_rate=0.05, min_similarity=0.5)
    assert len(widened.examples) == len(plain.examples) == 120
    by_row = {(e["row"]): e["similarity"] for e in widened.examples}
    assert by_row == {e["row"]: e["similarity"] for e in plain.examples}  # no example sees its own rewording
    assert max(by_row.values()) < 0.99
    found = widened.assess(space.embed(["intent-3 wording-0"])[0], "s", "rewording of 3")
    assert found.seen and found.covered
