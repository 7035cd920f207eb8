"""Answer and ranking metrics shared by the router, the evaluation and the benchmarks.

    >>> token_f1("Refunds take 30 days.", "refunds within 30 days")
    0.75
    >>> rank_scores([1, None, 2], "recall_at_5")
    {'queries': 3, 'recall_at_1': 0.3333, 'recall_at_5': 0.6667, 'mrr': 0.5}

A module of its own so that the router (shadow agreement, calibration) and the evaluation (which
runs the router) both import it without importing each other.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def normalize_query(text: str) -> str:
    """A question's wording as a key: lowercase, single spaces, no trailing punctuation:
    'How do I export?' == 'how do i export'."""
    return " ".join(text.lower().split()).rstrip(" ?!.")


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: 'Refunds take 30 days.' vs 'refunds within 30 days' -> 0.75 (3 of 4 words shared each way)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, references: list[str]) -> float:
    return max((token_f1(prediction, r) for r in references), default=0.0)


def rank_scores(ranks: list[int | None], recall_key: str) -> dict:
    """Recall@1, recall over the ranked list (as `recall_key`) and MRR, from the 1-based rank of
    the first relevant result of each query (None: none in the list)."""
    n = max(len(ranks), 1)
    return {"queries": len(ranks), "recall_at_1": round(sum(r == 1 for r in ranks) / n, 4),
            recall_key: round(sum(r is not None for r in ranks) / n, 4),
            "mrr": round(sum(1 / r for r in ranks if r) / n, 4)}
