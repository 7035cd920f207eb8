"""Traces grouped into intents: wordings of one scope that the teacher answered from the same
document with the same answer, their query embeddings within `curate.intent_threshold`
(the same document with any answer is one need, which the frequency rule counts), and
personal data found by presidio, which keeps a wording out of training (`pii`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import lru_cache

import numpy as np

from distill.rag.answers import words
from distill.rag.corpus import cited_document
from distill.rag.embed import embed

REFUSED = "<refused>"  # the answer key of a refusal, so refusals group like answers


def normalize_answer(text: str) -> str:
    return " ".join(words(text))


def cluster_wordings(wordings: list[tuple[str | None, str]], embedder, threshold: float,
                     evidence: list[tuple] | None = None, neighbours: int = 10) -> dict[tuple[str | None, str], int]:
    """Map each (scope, normalized wording) to an intent number; only wordings of one scope join.

    With `evidence` (one (document, answer) pair per wording: what the teacher answered it from and
    with), two wordings join only when the teacher answered them from the same document with the
    same answer: one threshold on question similarity alone both merges different needs whose
    answers differ and splits rewordings of one need. On StackFAQ (125 threads, their users'
    rephrasings) see `scripts/bench_paraphrase.py` for purity and inconsistent rejections."""
    vectors = embed(embedder, [w for _, w in wordings], batch_size=128) if wordings else np.zeros((0, 1))
    return cluster_vectors(wordings, vectors, threshold, evidence, neighbours)


def cluster_vectors(wordings: list[tuple[str | None, str]], vectors: np.ndarray, threshold: float,
                    evidence: list[tuple] | None = None, neighbours: int = 10) -> dict[tuple[str | None, str], int]:
    """`cluster_wordings` over unit vectors already computed (one per wording)."""
    import faiss

    parent = list(range(len(wordings)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_scope: dict[str | None, list[int]] = defaultdict(list)
    for i, (scope, _) in enumerate(wordings):
        by_scope[scope].append(i)
    for members in by_scope.values():
        if len(members) < 2:
            continue
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors[members])
        scores, hits = index.search(vectors[members], min(neighbours, len(members)))
        for row, (score_row, hit_row) in enumerate(zip(scores, hits)):
            for score, hit in zip(score_row, hit_row):
                a, b = members[row], members[hit]
                if hit >= 0 and hit != row and score >= threshold and (evidence is None or evidence[a] == evidence[b]):
                    parent[find(a)] = find(b)
    return {wording: find(i) for i, wording in enumerate(wordings)}


def wording_evidence(traces: list[dict], keys: list[tuple], wordings: list[tuple]) -> list[tuple]:
    """Per wording, the (cited document, normalized answer) most of its traces gave; (None, REFUSED)
    when most were refused."""
    given: dict[tuple, Counter] = defaultdict(Counter)
    for trace, key in zip(traces, keys):
        if trace["refused"] or not trace["citations"]:
            given[key][(None, REFUSED)] += 1
        else:
            given[key][(cited_document(trace["citations"]), normalize_answer(trace["answer"]))] += 1
    return [given[w].most_common(1)[0][0] for w in wordings]


class PiiDetector:
    """Presidio's pattern recognizers (email, phone, card, IBAN, SSN, ...) with their checksums and
    context logic. No spaCy NER model ships offline, so a blank English pipeline tokenizes; entity
    types that need NER (names, places) are out of reach and not configured by default."""

    def __init__(self, entities: list[str], min_score: float):
        import logging

        import spacy
        import tldextract
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine

        # Presidio's email check calls tldextract, whose default extractor downloads the public-suffix
        # list: point it at the snapshot that ships inside tldextract.
        tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())

        class BlankEnglish(SpacyNlpEngine):
            def load(self) -> None:
                self.nlp = {"en": spacy.blank("en")}

        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)  # one warning per non-English recognizer
        engine = BlankEnglish(models=[{"lang_code": "en", "model_name": "blank"}])
        engine.load()
        registry = RecognizerRegistry()
        registry.load_predefined_recognizers(nlp_engine=engine, languages=["en"])
        self.analyzer = AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
        self.entities, self.min_score = entities, min_score
        self.find = lru_cache(maxsize=None)(self._find)  # traffic repeats: cost grows with distinct texts

    def _find(self, text: str, published: str = "") -> str | None:
        """The first personal-data entity type found in `text`, or None. Spans that also occur in
        `published` (the cited documents: a support address, a company phone) are not personal data."""
        if not text.strip():
            return None
        results = self.analyzer.analyze(text=text, language="en", entities=self.entities,
                                        score_threshold=self.min_score)
        found = [r for r in results if text[r.start:r.end] not in published]
        return found[0].entity_type if found else None
