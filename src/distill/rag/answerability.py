"""Does the corpus answer the question? A score, a threshold fitted on the documents, and refusals that help.

RAG is the fallback for everything the student does not take, so what it says when the documents do
not hold the answer decides how far anyone trusts the system; and every answer is a trace curation
may train on. The teacher therefore asks, before it generates anything, whether the evidence answers
the question, from three cheap local signals of its retrieval:

- `top`: the dense cosine of the best chunk (the strongest signal by far);
- `sentence`: the best cosine between the question and one sentence of the evidence;
- `coverage`: the share of the question's content words found in the best chunk and its heading.

They are combined by a logistic model whose weights were fitted on StackFAQ's tune half
(`python scripts/bench_answerability.py` prints the fit), so `score` is a number between 0 and 1:

    round(score(top=0.62, sentence=0.55, coverage=0.5), 2)  # 0.9
    round(score(top=0.21, sentence=0.18, coverage=0.0), 2)  # 0.0

Cosines differ from corpus to corpus, so each workspace gets its own threshold. Unlabelled traffic
cannot place it (a mixture fitted to a Zipf log locks onto its repeated head wordings and refuses
most answerable questions: docs/design-figures.md), so it is fitted on evidence whose answer is
known, which every corpus carries:

- **known answerable**: the questions the documents themselves ask (`documents_questions`: FAQ
  questions, titles, section headings), each asked of its own section's text without the heading
  that holds its words, beside the rest of the corpus. Asked that way, an FAQ's titles score like
  its users' own rephrasings;
- **known unanswerable**: off-topic probes (`data/probes.txt`), asked in the corpus's scopes.

The threshold refuses at least `PROBES_REFUSED` (95 %) of the probes, and goes higher as far as
refusing at most `teacher.answerability_quantile` (2 %) of the documents' own questions allows
(`fit`); a corpus without distinctive titles or headings (PolicyQA's segments) has only the probes. Traffic does not move it, whatever its shape, so
it cannot collapse; it is fitted again when the corpus changes (`ingest`, and `collect` or `curate`
on a workspace whose corpus is newer than its fit). The result, with its evidence and what share of
each kind it refuses, is kept in `<home>/answerability.json`; the score, threshold and method are
recorded on every trace; `distill teacher` shows them.

Two cheaper checks come first. A question that names something the documents never mention (a
capitalized word, not the first, that the corpus does not have in any case or inflection: "Is there
an Acme Calendar app?" asked of a notes app's help center) is refused as `unknown_name`. A question
that reads like a prompt injection (`corpus.injection_patterns`) is refused as `injection`: no
document answers it.

A refused answer names the nearest topics (`nearest_topics`, `refusal_message`), so a person can
rephrase.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np

from distill.workspace import Workspace

# Fitted on StackFAQ's tune half (in-scope rephrasings against the full corpus and against a corpus
# without a third of the threads; off-topic and other datasets' questions), raw-signal scale.
WEIGHTS = {"top": 17.35, "sentence": 0.65, "coverage": 0.62}
BIAS = -9.21
ANSWERABILITY_FILE = "answerability.json"
MIN_KNOWN_ANSWERABLE = 10  # fewer of the documents' own questions than this: the probes decide
MAX_KNOWN_ANSWERABLE = 300  # the documents' questions asked to fit the threshold (a fixed sample)
PROBES_REFUSED = 0.95  # the threshold refuses at least this share of the off-topic probes
PROBE_SCOPES = 3  # each probe is asked in this many of the corpus's scopes
METHODS = ("documents_questions", "ratings", "probes", "default")

STOP_WORDS = frozenset(
    "a an the is are was were be been being do does did i you he she it we they my your our their to of in on at "
    "for with by from and or not no can could should would will how what why when where which who whom this that "
    "there here have has had if then so as about into any some me us them its am get".split())


_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][A-Za-z0-9]{2,})\b")


def unknown_names(question: str, knows) -> list[str]:
    """The names in a question (capitalized words of 3 or more letters, not the first of a
    sentence) that `knows(word)`, the corpus's vocabulary, does not have.

        unknown_names("Is there an Acme Calendar app?", knows=lambda w: w in {"Acme", "app"})  # ['Calendar']
    """
    return [name for name in dict.fromkeys(m.group(1) for m in _NAME.finditer(question.strip())) if not knows(name)]


def content_words(words: list[str]) -> set[str]:
    return {w for w in words if w not in STOP_WORDS}


def score(top: float | None, sentence: float | None, coverage: float | None) -> float:
    """The chance, 0 to 1, that the evidence answers the question (see the module docstring)."""
    z = BIAS + WEIGHTS["top"] * (top or 0.0) + WEIGHTS["sentence"] * (sentence or 0.0) + \
        WEIGHTS["coverage"] * (coverage or 0.0)
    return 1 / (1 + math.exp(-z))


# ---------------------------------------------------------------------------------------------
# The evidence: questions whose answer is known
# ---------------------------------------------------------------------------------------------

@dataclass
class DocumentQuestion:
    """A question a document asks itself (its title or a section heading) and the chunks of the
    section that answers it."""

    text: str
    scope: str | None
    doc_id: str
    chunks: list[dict]


_ALPHA = re.compile(r"[a-z]{2,}")
_WORD = re.compile(r"[a-z0-9]+")


def documents_questions(chunks: list[dict], limit: int = MAX_KNOWN_ANSWERABLE) -> list[DocumentQuestion]:
    """The titles and section headings that make distinctive questions: at least two content
    words, not the scope's name, and found in one document of their scope only (a website's name
    heading every segment of its policy says nothing about any one of them). Latest versions,
    unflagged chunks; a fixed sample of `limit`, so the same corpus always gives the same fit.

        chunks = [{"heading": "Refunds > How to request a refund", "doc_id": "billing/refunds", "scope": "billing",
                   "is_latest": True, "injection_flag": None, "text": "1. Open Billing."}]
        [q.text for q in documents_questions(chunks)]  # ['How to request a refund']
    """
    sections: dict[tuple, list[dict]] = {}
    for chunk in chunks:
        if not chunk.get("is_latest", True) or chunk.get("injection_flag") or not chunk.get("heading"):
            continue
        heading = chunk["heading"].split(" > ")[-1].lstrip("#").strip()
        sections.setdefault((chunk["scope"], heading), []).append(chunk)
    questions = []
    for (scope, heading), members in sections.items():
        documents = {c["doc_id"] for c in members}
        alpha = [w for w in _ALPHA.findall(heading.lower()) if w not in STOP_WORDS]
        if len(documents) == 1 and len(alpha) >= 2 and heading.lower() != str(scope).lower():
            questions.append(DocumentQuestion(heading, scope, members[0]["doc_id"], members))
    questions.sort(key=lambda q: hashlib.sha256(f"{q.scope}\x1f{q.text}".encode()).hexdigest())
    return questions[:limit]


def without_heading_line(text: str, heading: str) -> str:
    """`text` without the lines that are `heading` (a short section's heading kept in the text).

        without_heading_line("## Steps\\n1. Open it.", "Steps")
    """
    target = " ".join(_WORD.findall(heading.lower()))
    return "\n".join(line for line in text.splitlines() if " ".join(_WORD.findall(line.lower())) != target).strip() or text


@lru_cache(maxsize=1)
def probes() -> tuple[str, ...]:
    """The off-topic probes shipped with distill (`data/probes.txt`)."""
    path = Path(__file__).resolve().parents[1] / "data" / "probes.txt"
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))


def probe_questions(scopes: list[str | None]) -> list[tuple[str, str | None]]:
    """Every probe, asked in up to PROBE_SCOPES of `scopes` (in turn, so all scopes are probed)."""
    scopes = sorted(scopes, key=str) or [None]
    per = min(PROBE_SCOPES, len(scopes))
    return [(probe, scopes[(i * per + j) % len(scopes)]) for i, probe in enumerate(probes()) for j in range(per)]


# ---------------------------------------------------------------------------------------------
# The threshold
# ---------------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """A workspace's answerability threshold, how it was found, and on what.

    `method`: 'documents_questions' (the documents' own questions decide), 'probes' (only the
    off-topic probes do) or 'default' (`teacher.min_answerability`, nothing to fit on).
    `refused_share`: the share of each kind of evidence the threshold refuses."""

    threshold: float
    method: str
    fitted_at: str
    corpus_generation: int | None = None
    quantile: float | None = None
    evidence: dict = field(default_factory=dict)  # known_answerable / known_unanswerable: count and examples
    refused_share: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line on what decides refusals, for the CLI.

            Calibration(0.153, "documents_questions", "", evidence={"known_answerable": {"count": 124},
                "known_unanswerable": {"count": 195}}, refused_share={"known_answerable": 0.02,
                "known_unanswerable": 0.97}).summary()
        """
        known = self.evidence.get("known_answerable", {}).get("count", 0)
        probed = self.evidence.get("known_unanswerable", {}).get("count", 0)
        shares = self.refused_share
        parts = []
        if known:
            parts.append(f"{known} titles and headings: {shares.get('known_answerable', 0):.1%} refused")
        if rated := self.evidence.get("rated_answerable", {}).get("count", 0):
            parts.append(f"{rated} questions users rated answerable: {shares.get('rated_answerable', 0):.1%} refused")
        if probed:
            parts.append(f"{probed} off-topic probes: {shares.get('known_unanswerable', 0):.1%} refused")
        source = {"documents_questions": "from the documents' own questions",
                  "ratings": "from questions users rated answerable (the documents have too few distinctive titles or headings)",
                  "probes": "from off-topic probes (the documents have too few distinctive titles or headings)",
                  "default": "teacher.min_answerability (nothing fitted)"}[self.method]
        detail = f" ({'; '.join(parts)})" if parts else ""
        return f"answerability threshold {self.threshold:.3f}, {source}{detail}".replace("%", " %")


def fit(answerable: list[float], unanswerable: list[float], quantile: float, default: float,
        corpus_generation: int | None = None, examples: dict | None = None, rated: list[float] = ()) -> Calibration:
    """The threshold for scores of known-answerable and known-unanswerable questions.

    The probes set the floor: the threshold refuses at least PROBES_REFUSED of them. With at least
    MIN_KNOWN_ANSWERABLE known-answerable scores it goes as far above that floor as refusing at
    most `quantile` of those allows (the answerable side is what must not be refused); with neither
    kind of evidence, `default`.
    `rated` are the scores of questions users said the documents answer (an answer rated right, a
    refusal rated wrong: feedback.py): known-answerable too, and enough of them decide where the
    documents have too few questions of their own (method 'ratings').

        rng = np.random.default_rng(0)
        known, off_topic = list(rng.beta(8, 2, 200)), list(rng.beta(1, 60, 150))
        calibration = fit(known, off_topic, quantile=0.02, default=0.02)
        calibration.method, calibration.refused_share["known_answerable"] <= 0.02
        fit(known[:5], off_topic, quantile=0.02, default=0.02).method  # 'probes'
    """
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    documents = [s for s in answerable if s is not None]
    users = [s for s in rated if s is not None]
    known = np.asarray(documents + users, dtype=float)
    probed = np.asarray([s for s in unanswerable if s is not None], dtype=float)
    # just above the probes' PROBES_REFUSED quantile: a score below the threshold is refused
    floor = float(np.nextafter(np.quantile(probed, PROBES_REFUSED, method="higher"), 1.0)) if len(probed) else None
    if len(known) >= MIN_KNOWN_ANSWERABLE:
        method = "documents_questions" if len(documents) >= MIN_KNOWN_ANSWERABLE else "ratings"
        threshold = max(float(np.quantile(known, quantile, method="lower")), floor or 0.0)
    elif floor is not None:
        method, threshold = "probes", floor
    else:
        method, threshold = "default", default
    evidence = {"known_answerable": {"count": len(documents)}, "known_unanswerable": {"count": int(len(probed))},
                "rated_answerable": {"count": len(users)}}
    for kind, shown in (examples or {}).items():
        evidence[kind]["examples"] = shown[:5]
    refused = {"known_answerable": round(float(np.mean(np.asarray(documents) < threshold)), 4) if documents else None,
               "known_unanswerable": round(float(np.mean(probed < threshold)), 4) if len(probed) else None,
               "rated_answerable": round(float(np.mean(np.asarray(users) < threshold)), 4) if users else None}
    return Calibration(threshold, method, now, corpus_generation, quantile, evidence, refused)


def calibration_path(workspace: Workspace) -> Path:
    return workspace.home / ANSWERABILITY_FILE


def load_calibration(workspace: Workspace) -> Calibration | None:
    """The workspace's fitted calibration, or None when none has been fitted (or the file is of
    an older kind, fitted to traffic: it is fitted again)."""
    try:
        data = json.loads(calibration_path(workspace).read_text())
        calibration = Calibration(**{k: v for k, v in data.items() if k in Calibration.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None
    return calibration if calibration.method in METHODS else None


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

        refusal_message(["Resetting your password", "Two-factor authentication"])
        refusal_message(["Offline mode"], unknown=["Calendar"])
    """
    message = f"The documents do not mention {', '.join(unknown)}." if unknown else "The documents do not cover this."
    return f"{message} Nearest topics: {'; '.join(topics)}." if topics else message
