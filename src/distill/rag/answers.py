"""A cited answer and how it is held to its evidence: `Answer` (what the teacher returns and a
trace records), the words of a text, groundedness (the share of answer words in the cited
chunks) and citation (the chunk an answer quotes, or the one that grounds it best).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from distill.rag import answerability

WORD = re.compile(r"[a-z0-9]+")


SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


@dataclass
class Answer:
    query: str
    scope: str | None
    answer: str
    citations: list[str]
    cited_doc_versions: list[dict]
    retrieved: list[str]
    refused: bool
    refusal_reason: str | None
    top_score: float | None
    score_margin: float | None
    retriever_agreement: float | None
    mean_logprob: float | None
    answer_score: float | None
    groundedness: float | None
    citation_valid: bool
    latency_ms: float
    retrieval_ms: float
    prompt_tokens: int
    completion_tokens: int
    model: str
    backend: str
    prompt: list[dict] = field(default_factory=list, repr=False)
    answerability: float | None = None  # 0 to 1: does the evidence answer the question?
    answerability_threshold: float | None = None  # below it the teacher refuses
    answerability_method: str | None = None  # how that threshold was set (answerability.METHODS, or 'setting')
    nearest_topics: list[str] = field(default_factory=list)
    unknown_names: list[str] = field(default_factory=list)  # refused as unknown_name: the names the corpus lacks

    @property
    def message(self) -> str:
        """What a person reads: the answer, or why there is none and which topics are near."""
        return answerability.refusal_message(self.nearest_topics, self.unknown_names) if self.refused else self.answer

    def trace_fields(self) -> dict:
        """The fields of a `store.Trace` this answer fills (the caller adds ids, times and route)."""
        return dict(scope=self.scope, query=self.query, answer=self.answer, citations=self.citations,
                    cited_doc_versions=self.cited_doc_versions, retrieved=self.retrieved, refused=self.refused,
                    refusal_reason=self.refusal_reason, top_score=self.top_score, score_margin=self.score_margin,
                    retriever_agreement=self.retriever_agreement, mean_logprob=self.mean_logprob,
                    answer_score=self.answer_score, groundedness=self.groundedness,
                    citation_valid=self.citation_valid, retrieval_ms=self.retrieval_ms,
                    prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, model=self.model,
                    backend=self.backend, answerability=self.answerability,
                    answerability_threshold=self.answerability_threshold,
                    answerability_method=self.answerability_method, nearest_topics=self.nearest_topics)


@lru_cache(maxsize=65_536)
def text_words(text: str) -> tuple[str, frozenset[str]]:
    """A chunk's words joined by single spaces, and their set: evidence repeats across answers, so
    each distinct text is tokenized once."""
    found = words(text)
    return " ".join(found), frozenset(found)


def groundedness(answer: str, chunks: list[dict]) -> float:
    """Share of the answer's words that occur in the cited chunks (1.0 for a verbatim quote)."""
    answer_words = words(answer)
    if not answer_words:
        return 0.0
    source = frozenset().union(*(text_words(c["text"])[1] for c in chunks))
    return sum(w in source for w in answer_words) / len(answer_words)


def cite(answer: str, evidence: list[dict]) -> list[dict]:
    """The evidence chunks an answer comes from: those containing it verbatim, else the best overlap."""
    needle = " ".join(words(answer))
    if not needle or not evidence:
        return []
    verbatim = [c for c in evidence if needle in text_words(c["text"])[0]]
    if verbatim:
        return verbatim[:1]
    best = max(evidence, key=lambda c: groundedness(answer, [c]))
    return [best] if groundedness(answer, [best]) > 0 else []
