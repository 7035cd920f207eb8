"""The open-book student's examples and answers: a question with the evidence it may quote.

A closed-book student can only know the answers it memorised, so with one agreed answer per
intent it knows less than replay. An open-book student learns a behaviour instead (RAFT, Zhang et
al., 2024): read the numbered evidence, answer with a short quote from the block that holds the
answer, and say which block; or refuse when no block holds it. So it can answer a question no
intent covers, and a question whose document changed, from the evidence retrieved now.

    chunks = [{"chunk_id": "kb/reset@v2#0", "heading": "Reset", "text": "The link is valid for 1 hour."},
              {"chunk_id": "kb/plans@v1#0", "heading": "Plans", "text": "Plus costs 8 dollars a month."}]
    print(render_prompt(DEFAULT_TEMPLATE, "How long is the reset link valid?", chunks, 250))
    parse_answer("[1] The link is valid for 1 hour.", chunks)

Training examples (`examples`) come from curated traces, RAFT-style: the chunks the teacher read
for that trace, at the trace's document versions (chunk ids carry them), the cited one among up
to `student.evidence_chunks - 1` retrieved distractors in a shuffled order; and for a share
(`train.no_evidence_share`) of examples, the distractors alone, with the refusal as the target
(`train.no_evidence_target = "refusal"`) or, as in RAFT, the answer still (`"answer"`).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

REFUSAL = "I don't know."
DEFAULT_TEMPLATE = ("{evidence}\n\nQuestion: {query}\nAnswer with the number of the evidence that answers it "
                    "and a short quote from it, or I don't know.")
NO_EVIDENCE_TARGETS = ("refusal", "answer")
_CITED = re.compile(r"^\s*\[(\d+)\]\s*(.*)$", re.S)
_SPACE = re.compile(r"\s+")


@dataclass
class Quoted:
    """A student's open-book answer, read: the answer without its citation, the chunk it cites,
    whether the answer is a quote from that chunk, and whether it is the refusal."""

    answer: str
    chunk_id: str | None
    quoted: bool
    refused: bool


def shown(chunks: list[dict], max_words: int) -> list[dict]:
    """The chunks shown within `max_words` words, in order: the first always whole, later ones only
    while they fit."""
    kept, left = [], max_words
    for chunk in chunks:
        size = len(chunk["text"].split())
        if kept and size > left:
            break
        kept.append(chunk)
        left -= size
    return kept


def student_evidence(teacher, query: str, scope: str | None, config) -> tuple[list[dict], str | None, float | None]:
    """(the chunks the student is shown, the teacher's early refusal, the answerability score):
    the teacher's evidence for the question (Teacher.evidence), cut to `student.evidence_chunks`
    and `student.evidence_words` (`config` is the [student] section)."""
    evidence, refusal, score = teacher.evidence(query, scope)
    return shown(evidence[:config.evidence_chunks], config.evidence_words), refusal, score


def render_evidence(chunks: list[dict], max_words: int) -> str:
    """Numbered evidence blocks, `[n] heading: text`, best first, the chunks `shown` keeps."""
    lines = []
    for number, chunk in enumerate(shown(chunks, max_words), 1):
        text = _SPACE.sub(" ", chunk["text"]).strip()
        heading = _SPACE.sub(" ", chunk.get("heading") or "").strip()
        lines.append(f"[{number}] {heading}: {text}" if heading else f"[{number}] {text}")
    return "\n".join(lines)


def render_prompt(template: str, query: str, chunks: list[dict], max_words: int) -> str:
    return template.format(evidence=render_evidence(chunks, max_words), query=query.strip())


def target(answer: str | None, number: int | None) -> str:
    """The completion: `[n] answer` on one line (the student stops at a line's end), or the refusal."""
    return REFUSAL if answer is None or number is None else f"[{number}] {_SPACE.sub(' ', answer).strip()}"


def parse_answer(text: str, chunks: list[dict]) -> Quoted:
    """Read `[n] answer`: the cited chunk is the n-th shown, and the answer counts as quoted when
    its words appear in that chunk in that order (case and spacing aside)."""
    text = text.strip()
    if not text or text.lower().startswith(REFUSAL.lower().rstrip(".")):
        return Quoted(REFUSAL, None, False, True)
    match = _CITED.match(text)
    if not match:
        return Quoted(text, None, False, False)
    number, answer = int(match.group(1)), match.group(2).strip()
    if not 1 <= number <= len(chunks) or not answer:
        return Quoted(answer, None, False, False)
    chunk = chunks[number - 1]
    return Quoted(answer, chunk["chunk_id"], _normal(answer.rstrip(".")) in _normal(chunk["text"]), False)


def _normal(text: str) -> str:
    return _SPACE.sub(" ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def holds(chunk: dict, answer: str) -> bool:
    """Whether the chunk's text holds the answer (a distractor must not)."""
    return bool(answer) and _normal(answer.rstrip(".")) in _normal(chunk["text"])


def examples(query: str, answer: str | None, cited: str | None, retrieved: list[str], chunks: dict[str, dict],
             evidence_chunks: int, max_words: int, no_evidence_share: float, no_evidence_target: str,
             template: str) -> list[dict]:
    """The open-book examples of one trained wording: `answer` (None: the intent is refused) cited
    from chunk `cited` among the `retrieved` chunk ids (rank order; `chunks` maps ids to rows).

    One example, with the cited chunk among the distractors at a position drawn from the wording
    itself (so a rerun writes the same set), or, for a `no_evidence_share` of wordings, the
    distractors alone. Returns [] when the cited chunk is not in the corpus any more."""
    seed = int(hashlib.sha256(f"{query}\x00{cited}".encode()).hexdigest()[:12], 16)
    draw = random.Random(seed)
    seen_hashes, distractors = set(), []
    for chunk_id in retrieved:
        chunk = chunks.get(chunk_id)
        if chunk is None or chunk_id == cited or chunk.get("content_hash") in seen_hashes:
            continue
        if answer is not None and holds(chunk, answer):  # another copy of the answer is not a distractor
            continue
        seen_hashes.add(chunk.get("content_hash"))
        distractors.append(chunk)
    if answer is None or cited is None:  # a refused intent: what retrieval found, and the refusal
        evidence = distractors[:evidence_chunks]
        return [_row(template, query, evidence, max_words, REFUSAL, "refused")] if evidence else []
    if cited not in chunks:
        return []
    if draw.random() < no_evidence_share and distractors:
        evidence = distractors[:evidence_chunks]
        completion = REFUSAL if no_evidence_target == "refusal" else _SPACE.sub(" ", answer).strip()
        return [_row(template, query, evidence, max_words, completion, "no_evidence")]
    evidence = distractors[:evidence_chunks - 1]
    evidence.insert(draw.randrange(len(evidence) + 1), chunks[cited])
    kept = shown(evidence, max_words)
    if chunks[cited] not in kept:  # the budget would cut the answer off: show it first instead
        evidence.remove(chunks[cited])
        evidence.insert(0, chunks[cited])
        kept = shown(evidence, max_words)
    return [_row(template, query, kept, max_words, target(answer, kept.index(chunks[cited]) + 1), "evidence")]


def _row(template: str, query: str, evidence: list[dict], max_words: int, completion: str, kind: str) -> dict:
    kept = shown(evidence, max_words)
    return {"prompt": [{"role": "user", "content": render_prompt(template, query, kept, max_words)}],
            "completion": [{"role": "assistant", "content": completion}],
            "evidence_ids": [c["chunk_id"] for c in kept], "evidence_kind": kind}
