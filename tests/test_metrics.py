"""Answer and ranking metrics: SQuAD token F1 and normalization, recall and MRR."""

import doctest

import pytest

import distill.metrics
from distill.metrics import best_f1, normalize, normalize_query, rank_scores, token_f1


def test_the_docstring_examples_run():
    assert doctest.testmod(distill.metrics).failed == 0


def test_token_f1_is_squads():
    assert token_f1("refund within 30 days", "refunds within 30 days") == pytest.approx(0.75)
    assert token_f1("The answer.", "answer") == 1.0  # articles and punctuation do not count
    assert token_f1("", "") == 1.0 and token_f1("yes", "") == 0.0 and token_f1("no", "yes") == 0.0
    assert best_f1("30 days", ["14 days", "within 30 days"]) == pytest.approx(0.8)
    assert best_f1("anything", []) == 0.0
    assert normalize("The Refund, an Answer!") == "refund answer"


def test_a_query_key_ignores_case_spacing_and_trailing_punctuation():
    assert normalize_query("  How do I   export?") == normalize_query("how do i export") == "how do i export"


def test_rank_scores_count_misses_as_zero():
    assert rank_scores([], "recall_at_5") == {"queries": 0, "recall_at_1": 0.0, "recall_at_5": 0.0, "mrr": 0.0}
    assert rank_scores([2, 2], "recall_at_5")["mrr"] == 0.5
