"""Does the corpus answer the question? A score, a per-workspace threshold, and refusals that help.

RAG is the fallback for everything the student does not take, so what it says when the documents do
not hold the answer decides how far anyone trusts the system; and every answer is a trace curation
may train on. The teacher therefore asks, before it generates anything, whether the evidence answers
the question, from three cheap local signals of its retrieval:

- `top`: the dense cosine of the best chunk (the strongest signal by far);
- `sentence`: the best cosine between the question and one sentence of the evidence;
- `coverage`: the share of the question's content words found in the best chunk and its heading.

They are combined by a logistic model whose weights were fitted on StackFAQ's tune half
(`python scripts/bench_answerability.py` prints the fit), so `score` is a number between 0 and 1:

    >>> round(score(top=0.62, sentence=0.55, coverage=0.5), 2)
    0.9
    >>> round(score(top=0.21, sentence=0.18, coverage=0.0), 2)
    0.0

Cosines differ from corpus to corpus (PolicyQA's answerable questions have a median top score of
0.48, StackFAQ's 0.70), so the threshold is calibrated per workspace from the scores of the questions
it is actually asked (`fit_threshold`): traffic that answerable and unanswerable questions share has
two modes, and the threshold sits where the answerable mode ends; traffic with one mode is taken to
be answerable, and the threshold answers all but its lowest `UNIMODAL_QUANTILE`. The result is kept
in `<home>/answerability.json` and recorded, with the score, on every trace.

Two cheaper checks come first. A question that names something the documents never mention (a
capitalized word, not the first, that the corpus does not have: "Is there an Acme Calendar app?"
asked of a notes app's help center) is refused as `unknown_name`; on the StackFAQ and PolicyQA
report halves this refuses 0.2 % and 1.0 % of in-scope questions. A question that reads like a prompt
injection (`corpus.injection_patterns`) is refused as `injection`: no document answers it.

A refused answer names the nearest topics (`nearest_topics`, `refusal_message`), so a person can
rephrase.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from distill.config import Workspace

# Fitted on StackFAQ's tune half (in-scope rephrasings against the full corpus and against a corpus
# without a third of the threads; off-topic and other datasets' questions), raw-signal scale.
WEIGHTS = {"top": 17.35, "sentence": 0.65, "coverage": 0.62}
BIAS = -9.21
CALIBRATION_FILE = "answerability.json"
MIN_TRACES = 100  # fewer scores than this: the configured default threshold stays
RECENT_TRACES = 20_000  # curation refits from this many of the latest traces
SAMPLE_QUERIES = 1_000  # collect fits a new workspace's threshold from this many of its questions
SEPARATION = 2.0  # Ashman's D between the two modes above which they count as two
UNIMODAL_QUANTILE = 0.05
TAIL_SD = 2.0  # the answerable mode ends this many of its standard deviations below its mean

STOP_WORDS = frozenset(
    "a an the is are was were be been being do does did i you he she it we they my your our their to of in on at "
    "for with by from and or not no can could should would will how what why when where which who whom this that "
    "there here have has had if then so as about into any some me us them its am get".split())


_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][A-Za-z0-9]{2,})\b")


def unknown_names(question: str, knows) -> list[str]:
    """The names in a question (capitalized words of 3 or more letters, not the first of a
    sentence) that `knows(word)`, the corpus's vocabulary, does not have.

        >>> unknown_names("Is there an Acme Calendar app?", knows=lambda w: w in {"Acme", "app"})
        ['Calendar']
    """
    return [name for name in dict.fromkeys(m.group(1) for m in _NAME.finditer(question.strip())) if not knows(name)]


def content_words(words: list[str]) -> set[str]:
    return {w for w in words if w not in STOP_WORDS}


def score(top: float | None, sentence: float | None, coverage: float | None) -> float:
    """The chance, 0 to 1, that the evidence answers the question (see the module docstring)."""
    z = BIAS + WEIGHTS["top"] * (top or 0.0) + WEIGHTS["sentence"] * (sentence or 0.0) + \
        WEIGHTS["coverage"] * (coverage or 0.0)
    return 1 / (1 + math.exp(-z))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


@dataclass
class Calibration:
    """A workspace's answerability threshold and how it was found (`method`: 'two_modes', 'one_mode'
    or 'default')."""

    threshold: float
    method: str
    scores: int
    fitted_at: str
    modes: dict | None = None  # two_modes: weight, mean and sd of each mode, on the logit scale


def _two_gaussians(x: np.ndarray, iterations: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, means, sds) of a two-component Gaussian mixture fitted by EM from fixed quantile
    starts, so the same scores always give the same fit; component 1 has the higher mean."""
    mean = np.quantile(x, [0.05, 0.95])
    sd = np.full(2, x.std() / 2 + 1e-6)
    weight = np.array([0.5, 0.5])
    for _ in range(iterations):
        density = weight * np.exp(-0.5 * ((x[:, None] - mean) / sd) ** 2) / sd
        resp = density / np.maximum(density.sum(1, keepdims=True), 1e-300)
        n = resp.sum(0) + 1e-12
        weight, mean = n / len(x), (resp * x[:, None]).sum(0) / n
        sd = np.sqrt((resp * (x[:, None] - mean) ** 2).sum(0) / n) + 1e-6
    order = np.argsort(mean)
    return weight[order], mean[order], sd[order]


def fit_threshold(scores: list[float], default: float) -> Calibration:
    """The threshold for this workspace's scores (worked in logits, where the modes are Gaussian-like).

    Two modes, clearly apart (Ashman's D >= SEPARATION, the lower one at least 3 % of traffic): the
    point between them where the answerable mode becomes the likelier, but never more than TAIL_SD
    of its standard deviations below its mean. One mode: the traffic is taken as answerable and the
    threshold answers all but its lowest UNIMODAL_QUANTILE (those are the likeliest to be out of
    scope, if any is). Fewer than MIN_TRACES scores: `default`.

        >>> rng = np.random.default_rng(0)
        >>> answerable, off_topic = rng.beta(40, 10, 400), rng.beta(2, 18, 100)  # scores near 0.8, near 0.1
        >>> fit_threshold(list(answerable) + list(off_topic), default=0.3).method
        'two_modes'
        >>> fit_threshold(list(answerable), default=0.3).method
        'one_mode'
    """
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    x = np.asarray([s for s in scores if s is not None and np.isfinite(s)], dtype=float)
    if len(x) < MIN_TRACES:
        return Calibration(default, "default", len(x), now)
    z = _logit(x)
    weight, mean, sd = _two_gaussians(z)
    separation = math.sqrt(2) * (mean[1] - mean[0]) / math.sqrt(sd[0] ** 2 + sd[1] ** 2)
    if separation >= SEPARATION and weight[0] >= 0.03:
        grid = np.linspace(mean[0], mean[1], 2001)
        lower = weight[0] * np.exp(-0.5 * ((grid - mean[0]) / sd[0]) ** 2) / sd[0]
        upper = weight[1] * np.exp(-0.5 * ((grid - mean[1]) / sd[1]) ** 2) / sd[1]
        boundary = grid[int(np.argmax(upper >= lower))]
        cut = min(boundary, mean[1] - TAIL_SD * sd[1])
        modes = {"weight": weight.round(4).tolist(), "mean": mean.round(4).tolist(), "sd": sd.round(4).tolist(),
                 "separation": round(float(separation), 3)}
        return Calibration(float(1 / (1 + math.exp(-cut))), "two_modes", len(x), now, modes)
    return Calibration(float(np.quantile(x, UNIMODAL_QUANTILE)), "one_mode", len(x), now)


def calibration_path(workspace: Workspace) -> Path:
    return workspace.home / CALIBRATION_FILE


def load_threshold(workspace: Workspace, default: float) -> float:
    """The workspace's calibrated threshold, or `default` when none has been fitted."""
    try:
        return float(json.loads(calibration_path(workspace).read_text())["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def save_calibration(workspace: Workspace, calibration: Calibration) -> Path:
    """Write atomically: a teacher loading at the same moment reads the old file or the new one."""
    path = calibration_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(calibration), indent=2))
    os.replace(tmp, path)
    return path


def nearest_topics(chunks: list[dict], n: int = 3) -> list[str]:
    """Up to `n` distinct topics of the best chunks: each one's heading, else its document id."""
    topics: list[str] = []
    for chunk in chunks:
        topic = " ".join((chunk.get("heading") or "").lstrip("#").split()) or chunk["doc_id"]
        if topic not in topics:
            topics.append(topic)
        if len(topics) == n:
            break
    return topics


def refusal_message(topics: list[str], unknown: list[str] | None = None) -> str:
    """What a person reads when the documents do not answer: why, and what they do cover nearby.

        >>> refusal_message(["Resetting your password", "Two-factor authentication"])
        'The documents do not cover this. Nearest topics: Resetting your password; Two-factor authentication.'
        >>> refusal_message(["Offline mode"], unknown=["Calendar"])
        'The documents do not mention Calendar. Nearest topics: Offline mode.'
    """
    message = f"The documents do not mention {', '.join(unknown)}." if unknown else "The documents do not cover this."
    return f"{message} Nearest topics: {'; '.join(topics)}." if topics else message
