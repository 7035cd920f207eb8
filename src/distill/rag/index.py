"""Ingest documents into a hybrid index and retrieve from it.

Two retrievers over the same chunks: dense (sentence-transformers embeddings in a FAISS inner-product
index) and lexical (BM25 from DuckDB's `fts` extension), fused by weighted reciprocal rank fusion and
filtered by scope and document version. Files live in `<home>/index/`: `corpus.duckdb` (documents,
chunks, BM25), `dense.faiss` (row i = chunk_key i) and `dense.json` (which embedding model built it).

    report = ingest(workspace, Path("docs/"), config=cfg)
    retriever = Retriever(workspace, cfg.index)
    hits = retriever.search("how do I export my notes?", scope="notes").hits
    hits[0].chunk["chunk_id"]  # 'notes/export-notes@v2#0'

Re-ingesting a changed document stores a new version beside the old: retrieval returns the newest
version by default (`latest_only=False` searches all). Ingest is resumable: documents are committed
first, then any chunk without a vector is embedded, so a killed ingest is repaired by rerunning it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from distill.config import Config, IndexConfig
from distill.errors import DistillError
from distill.rag.corpus import Document, allowed, chunk_document, compile_patterns, load_documents
from distill.rag.embed import PACKAGED_MINILM, OnnxQueryEncoder, embed, load_embedder
from distill.store.chunks import CorpusSnapshot, CorpusStore
from distill.store.db import WAIT_S
from distill.workspace import Workspace


def chunk_embedding_text(chunk: dict) -> str:
    """What the dense retriever sees of a chunk: its heading path, then its text."""
    return f"{chunk['heading']}\n{chunk['text']}" if chunk.get("heading") else chunk["text"]


@dataclass
class IngestReport:
    documents_read: int = 0
    added: int = 0
    new_versions: int = 0
    unchanged: int = 0
    skipped_sources: dict[str, int] = field(default_factory=dict)
    chunks_added: int = 0
    flagged_chunks: list[str] = field(default_factory=list)
    embedded: int = 0


def corpus_path(workspace: Workspace) -> Path:
    return workspace.index_dir / "corpus.duckdb"


def ingest(workspace: Workspace, path: Path, config: Config, fmt: str = "auto", version: int | None = None,
           progress: bool = False) -> IngestReport:
    """Load, filter by source allowlist, chunk, store and index the documents at `path`."""
    documents = load_documents(path, fmt, version)
    report = IngestReport(documents_read=len(documents))
    patterns = compile_patterns(config.corpus.injection_patterns)
    code_patterns = compile_patterns(config.corpus.code_injection_patterns, "corpus.code_injection_patterns")
    store = CorpusStore(corpus_path(workspace))
    try:
        latest = store.document_versions()
        stored = store.document_hashes()
        new_docs: dict[tuple[str, int], Document] = {}
        for doc in documents:
            if not allowed(doc, config.corpus.allowed_sources):
                report.skipped_sources[doc.source] = report.skipped_sources.get(doc.source, 0) + 1
                continue
            current = latest.get(doc.doc_id)
            if current is not None and stored[(doc.doc_id, current)] == doc.content_hash:
                doc.version = current  # the same text again, whatever version it is labelled: nothing changed
            elif doc.version is None:
                doc.version = (current or 0) + 1
            key = (doc.doc_id, doc.version)
            if stored.get(key) == doc.content_hash:
                report.unchanged += 1
                continue
            if key in stored:
                raise DistillError(f"document '{doc.doc_id}' version {doc.version} is already stored with other "
                                   f"text; give the changed document a higher version")
            if key in new_docs:
                raise DistillError(f"document '{doc.doc_id}' version {doc.version} appears twice in {path}")
            new_docs[key] = doc
            if doc.doc_id in latest:
                report.new_versions += 1
            else:
                report.added += 1
        if not new_docs and not report.unchanged:
            raise DistillError(f"no document in {path} comes from an allowed source "
                               f"({', '.join(sorted(report.skipped_sources))}); add it to corpus.allowed_sources")
        key = store.next_chunk_key()
        rows = []
        for doc in new_docs.values():
            for chunk in chunk_document(doc, config.corpus.chunk_words, patterns, code_patterns):
                rows.append({**chunk.__dict__, "chunk_key": key, "is_latest": True})
                key += 1
                if chunk.injection_flag:
                    report.flagged_chunks.append(chunk.chunk_id)
        report.chunks_added = len(rows)
        if new_docs:
            store.add([{"doc_id": d.doc_id, "version": d.version, "scope": d.scope, "source": d.source,
                        "title": d.title, "effective_date": d.effective_date, "content_hash": d.content_hash}
                       for d in new_docs.values()], rows)
        report.embedded = sync_dense(workspace, store, config.index, progress)
    finally:
        store.close()
    return report


def dense_meta(workspace: Workspace) -> dict | None:
    """The active dense index: `dense.json` names the configured embedding model it derives from,
    the embedder that built it (that model, or a tuned version of it: `distill tune-retriever`)
    and its FAISS file. Replacing `dense.json` atomically is how a tuned retriever is switched on."""
    path = workspace.index_dir / "dense.json"
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    meta.setdefault("embedder", meta["embedding_model"])
    meta.setdefault("faiss", "dense.faiss")
    return meta


def active_embedder(workspace: Workspace, meta: dict):
    """The SentenceTransformer that built the dense index `meta` describes (a tuned version is a
    folder recorded relative to the workspace, so a copied workspace keeps working)."""
    name = meta["embedder"]
    local = workspace.home / name
    return load_embedder(str(local) if name != PACKAGED_MINILM and local.is_dir() else name)


def write_dense_meta(workspace: Workspace, meta: dict) -> None:
    """Replace `dense.json` atomically, one generation on: a running router reloads when it changes."""
    previous = dense_meta(workspace) or {}
    meta = {**meta, "generation": int(previous.get("generation", 0)) + 1}
    tmp = workspace.index_dir / "dense.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, workspace.index_dir / "dense.json")


def sync_dense(workspace: Workspace, store: CorpusStore, config: IndexConfig, progress: bool) -> int:
    """Embed every chunk that has no vector yet, with the active embedder, and append it to the
    active FAISS index (atomic rewrite)."""
    import faiss

    meta = dense_meta(workspace) or {"embedding_model": config.embedding_model, "embedder": config.embedding_model,
                                     "faiss": "dense.faiss"}
    if meta["embedding_model"] != config.embedding_model:
        raise DistillError(f"the index was built with '{meta['embedding_model']}', the config names "
                           f"'{config.embedding_model}'; set index.embedding_model back or ingest into a new --home")
    index_file = workspace.index_dir / meta["faiss"]
    index = faiss.read_index(str(index_file)) if index_file.exists() else None
    start = index.ntotal if index is not None else 0
    missing = [c for c in store.chunks() if c["chunk_key"] >= start]
    if not missing:
        return 0
    vectors = embed(active_embedder(workspace, meta), [chunk_embedding_text(c) for c in missing], progress=progress)
    if index is None:
        index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    tmp = index_file.with_suffix(".faiss.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, index_file)
    write_dense_meta(workspace, {**meta, "dim": int(vectors.shape[1]), "chunks": int(index.ntotal)})
    return len(missing)


class Bm25:
    """BM25 from DuckDB's `fts` index, scored in memory.

    DuckDB tokenizes, stems and counts at ingest (`PRAGMA create_fts_index`), but its `match_bm25`
    is slow per query on a large corpus. The same statistics loaded once into a sparse
    term-by-chunk matrix of BM25 weights (k1 = 1.2, b = 0.75, DuckDB's formula and defaults) give
    the same scores many times faster (docs/design-figures.md): a query's score vector is the sum
    of its terms' rows."""

    K1, B = 1.2, 0.75

    def __init__(self, store: CorpusStore, n_chunks: int):
        from scipy.sparse import csr_matrix

        fts = store.fts_index()
        self.store = store
        self.term_ids = {term: termid for term, termid, _ in fts["terms"]}
        n_terms = max(self.term_ids.values(), default=-1) + 1
        df = np.zeros(n_terms)
        for _, termid, freq in fts["terms"]:
            df[termid] = freq
        idf = np.log10((fts["num_docs"] - df + 0.5) / (df + 0.5) + 1)  # DuckDB's log() is base 10
        length = np.zeros(n_chunks)
        length[fts["lengths"]["chunk_key"]] = fts["lengths"]["len"]
        termid, key, tf = (fts["postings"][c] for c in ("termid", "chunk_key", "tf"))
        tf = tf.astype(np.float64)
        norm = self.K1 * (1 - self.B + self.B * length[key] / max(fts["avgdl"] or 1.0, 1e-9))
        weight = idf[termid] * tf * (self.K1 + 1) / (tf + norm)
        self.matrix = csr_matrix((weight, (termid, key)), shape=(n_terms, n_chunks))
        self._terms = lru_cache(maxsize=65536)(self.store.query_terms)  # traffic repeats its questions

    def knows(self, word: str) -> bool:
        """Whether the corpus has `word` in any case or inflection (both stemmed as DuckDB stems
        them; stop words, which BM25 leaves out, included)."""
        terms = self._terms(word)
        return not terms or any(t in self.store.vocabulary() for t in terms)

    def scores(self, query: str) -> np.ndarray:
        rows = [self.term_ids[t] for t in self._terms(query) if t in self.term_ids]
        if not rows:
            return np.zeros(self.matrix.shape[1])
        return np.asarray(self.matrix[rows].sum(axis=0)).ravel()

    def search(self, query: str, allowed: np.ndarray, depth: int) -> list[tuple[int, float]]:
        """(chunk_key, score), best first, among chunks where `allowed` is true and a term matched."""
        scores = np.where(allowed, self.scores(query), 0.0)
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > depth:
            candidates = candidates[np.argpartition(-scores[candidates], depth)[:depth]]
        ranked = candidates[np.argsort(-scores[candidates], kind="stable")]
        return [(int(k), float(scores[k])) for k in ranked]


@dataclass
class Hit:
    chunk: dict
    score: float
    dense_score: float | None
    dense_rank: int | None
    bm25_score: float | None
    bm25_rank: int | None
    heading_score: float | None = None  # cosine to the chunk's own heading, when it is distinctive
    rerank_score: float | None = None  # the reranker's sigmoid score, when it reordered this hit


class HeadingField:
    """The second field of a multi-field dense retriever: each chunk's heading on its own.

    An FAQ entry's heading is its own question, and a question asked in other words matches it
    better than it matches the entry's heading and answer together, and the better of the two
    fields beats either (docs/design-figures.md). Only headings that name one document of their scope count (a
    website's name heading every segment of its policy says nothing about any of them). Vectors
    are kept in `<home>/index/headings.npz` by heading text and embedder, so each heading is
    embedded once."""

    FILE = "headings.npz"

    def __init__(self, workspace: Workspace, chunks: list[dict], embedder_name: str, encode):
        owners: dict[tuple, set] = {}
        for chunk in chunks:
            if chunk.get("heading"):
                owners.setdefault((chunk["scope"], chunk["heading"]), set()).add(chunk["doc_id"])
        distinctive = sorted({h for (_, h), docs in owners.items() if len(docs) == 1})
        at = {h: i for i, h in enumerate(distinctive)}
        self.row = np.array([at[c["heading"]] if c.get("heading") and len(owners[(c["scope"], c["heading"])]) == 1
                             else -1 for c in chunks], dtype=np.int64)
        self.chunks_of: list[list[int]] = [[] for _ in distinctive]
        for key, row in enumerate(self.row):
            if row >= 0:
                self.chunks_of[row].append(key)
        self._keys = np.flatnonzero(self.row >= 0)  # chunks with a distinctive heading, and their rows
        self._rows = self.row[self._keys]
        self.vectors = self._vectors(workspace, distinctive, embedder_name, encode)

    def search(self, vector: np.ndarray, allowed: np.ndarray, depth: int = 10) -> dict[int, float]:
        """{chunk key: heading cosine} for the chunks under the `depth` best headings that have a
        chunk where `allowed` (the scope and version filter)."""
        if not len(self.chunks_of):
            return {}
        permitted = np.zeros(len(self.chunks_of), dtype=bool)
        permitted[self._rows[allowed[self._keys]]] = True
        similarity = np.where(permitted, self.vectors @ vector, -np.inf)
        best = np.argpartition(-similarity, depth)[:depth] if len(similarity) > depth else np.arange(len(similarity))
        return {key: float(similarity[row]) for row in best if permitted[row]
                for key in self.chunks_of[row] if allowed[key]}

    @classmethod
    def _vectors(cls, workspace: Workspace, headings: list[str], embedder_name: str, encode) -> np.ndarray:
        if not headings:
            return np.zeros((0, 1), dtype=np.float32)
        path = workspace.index_dir / cls.FILE
        known: dict[str, np.ndarray] = {}
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["embedder"]) == embedder_name:
                    known = dict(zip(saved["headings"].tolist(), saved["vectors"]))
        except (OSError, KeyError, ValueError):
            pass
        missing = [h for h in headings if h not in known]
        if missing:
            known.update(zip(missing, encode(missing)))
            names = sorted(known)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
            try:
                np.savez(tmp, embedder=np.array(embedder_name), headings=np.array(names),
                         vectors=np.stack([known[n] for n in names]).astype(np.float32))
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only workspace: the vectors are kept in memory only
        return np.stack([known[h] for h in headings]).astype(np.float32)

    def scores(self, keys: list[int], vector: np.ndarray) -> list[float | None]:
        """The heading cosine of each chunk key (None for a chunk without a distinctive heading)."""
        rows = self.row[keys] if keys else np.zeros(0, dtype=np.int64)
        similarity = self.vectors[np.maximum(rows, 0)] @ vector if len(self.vectors) else np.zeros(len(keys))
        return [float(s) if r >= 0 else None for r, s in zip(rows, similarity)]


@dataclass
class Retrieval:
    query: str
    scope: str | None
    hits: list[Hit]
    dense_top: list[int]
    bm25_top: list[int]
    latency_ms: float

    @property
    def agreement(self) -> float | None:
        """Overlap of the two retrievers' top 5 (1.0: they agree completely)."""
        if not self.dense_top or not self.bm25_top:
            return None
        return len(set(self.dense_top[:5]) & set(self.bm25_top[:5])) / 5


QUERY_CACHE = 20_000  # query vectors a retriever keeps (about 30 MB)


def embed_cached(cache: dict[str, np.ndarray], encode, queries: list[str]) -> np.ndarray:
    """Unit vectors for `queries`, through `cache`. Traffic repeats its wordings, so the last
    QUERY_CACHE distinct wordings keep their vectors (oldest dropped first) and are not embedded again."""
    missing = [q for q in dict.fromkeys(queries) if q not in cache]
    if missing:
        cache.update(zip(missing, encode(missing)))
    while len(cache) > QUERY_CACHE:
        cache.pop(next(iter(cache)))
    return np.stack([cache[q] for q in queries])


class Retriever:
    """Hybrid scoped retrieval over an ingested workspace. Construct once; thread-safe to share."""

    def __init__(self, workspace: Workspace, config: IndexConfig, dense: dict | None = None):
        """`dense` overrides the active dense index (`dense_meta`), to evaluate a candidate."""
        import faiss

        self.config, self.workspace = config, workspace
        db = corpus_path(workspace)
        deadline = time.monotonic() + WAIT_S
        while True:  # the FAISS file first: `ingest` commits chunks before their vectors, never after
            meta = dense or dense_meta(workspace)
            if not db.exists() or meta is None:
                raise DistillError(f"no corpus in {workspace.index_dir}; run `distill ingest PATH` first")
            if meta["embedding_model"] != config.embedding_model:
                raise DistillError(f"the index was built with '{meta['embedding_model']}', the config names "
                                   f"'{config.embedding_model}'; set index.embedding_model to match")
            self.index = faiss.read_index(str(workspace.index_dir / meta["faiss"]))
            self.store = CorpusSnapshot(db)  # in memory: the file stays free for the next `ingest`
            chunks = self.store.chunks()
            if self.index.ntotal == len(chunks):
                break
            if time.monotonic() > deadline:  # an ingest still embedding would have finished by now
                raise DistillError(f"the dense index has {self.index.ntotal} vectors for {len(chunks)} chunks; "
                                   f"rerun `distill ingest` to repair it")
            time.sleep(0.5)
        self.dense = meta
        self.generation = int(meta.get("generation", 0))  # bumped by every ingest and retriever switch
        self.chunks = chunks  # position == chunk_key
        self.scopes = {c["scope"] for c in chunks if c["scope"] is not None}
        self._chunk_scope = np.array([c["scope"] or "" for c in chunks], dtype=object)
        self._chunk_latest = np.array([c["is_latest"] for c in chunks], dtype=bool)
        self._chunk_doc = np.array([c["doc_id"] for c in chunks], dtype=object)
        self.model = active_embedder(workspace, meta)
        self.encode = OnnxQueryEncoder.build(self.model) or (lambda texts: embed(self.model, texts))
        self.bm25 = Bm25(self.store, len(chunks))
        self.headings = HeadingField(workspace, chunks, meta["embedder"], self.encode) if config.heading_field else None
        self._filters: dict[tuple, tuple] = {}
        self._query_vectors: dict[str, np.ndarray] = {}

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        """Unit vectors for `queries` (`embed_cached`)."""
        return embed_cached(self._query_vectors, self.encode, queries)

    def _filter(self, scope: str | None, latest_only: bool, withhold: str | None = None) -> tuple:
        """(FAISS selector or None, boolean mask over chunk keys) for a scope and version filter;
        `withhold` leaves one document out (not cached: answerability calibration asks each once)."""
        import faiss

        key = (scope, latest_only)
        if key not in self._filters:
            mask = np.ones(len(self.chunks), dtype=bool)
            if scope is not None:
                mask &= self._chunk_scope == scope
            if latest_only:
                mask &= self._chunk_latest
            selector = None if mask.all() else faiss.IDSelectorBatch(np.flatnonzero(mask).astype(np.int64))
            self._filters[key] = (selector, mask)
        if withhold is None:
            return self._filters[key]
        mask = self._filters[key][1] & (self._chunk_doc != withhold)
        return faiss.IDSelectorBatch(np.flatnonzero(mask).astype(np.int64)), mask

    def search(self, query: str, scope: str | None = None, k: int | None = None, latest_only: bool = True,
               query_vector: np.ndarray | None = None, withhold: str | None = None) -> Retrieval:
        """The top `k` chunks for `query` within `scope`, fused from dense and BM25 rankings
        (`withhold`: a document id left out, as if it had never been ingested)."""
        import faiss

        if scope is not None and scope not in self.scopes:
            raise DistillError(f"unknown scope '{scope}'; known scopes: {', '.join(sorted(self.scopes)) or '(none)'}")
        started = time.perf_counter()
        k = k or self.config.top_k
        depth = self.config.candidates
        vector = self.embed_queries([query]) if query_vector is None else query_vector.reshape(1, -1)
        selector, mask = self._filter(scope, latest_only, withhold)
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
        scores, keys = self.index.search(vector, depth, params=params)
        dense = {int(key): float(s) for key, s in zip(keys[0], scores[0]) if key >= 0}
        heading = self.headings.search(vector[0], mask) if self.headings else {}
        if found_by_heading := sorted(heading.keys() - dense.keys()):  # their text-and-heading cosine too
            vectors = self.index.reconstruct_batch(np.array(found_by_heading, dtype=np.int64))
            dense.update(zip(found_by_heading, (vectors @ vector[0]).tolist()))
        if self.headings:
            heading.update((key, s) for key, s in zip(dense, self.headings.scores(list(dense), vector[0])) if s is not None)
        # The dense ranking is multi-field: a chunk scores the better of its text-and-heading cosine
        # and its heading's own (HeadingField).
        ranked_dense = sorted(dense, key=lambda key: max(dense[key], heading.get(key, -1.0)), reverse=True)[:depth]
        dense_ranking = [(key, dense[key]) for key in ranked_dense]
        bm25 = self.bm25.search(query, mask, depth)
        fused: dict[int, float] = {}
        for weight, ranking in ((self.config.dense_weight, dense_ranking), (self.config.bm25_weight, bm25)):
            for rank, (key, _) in enumerate(ranking):
                fused[key] = fused.get(key, 0.0) + weight / (self.config.rrf_k + rank + 1)
        dense_at = {key: rank for rank, key in enumerate(ranked_dense)}
        bm25_at = {key: (rank, s) for rank, (key, s) in enumerate(bm25)}
        best = sorted(fused, key=fused.__getitem__, reverse=True)[:k]
        hits = []
        for key in best:
            b = bm25_at.get(key)
            dense_score = dense[key] if key in dense else float(self.index.reconstruct(key) @ vector[0])
            hits.append(Hit(self.chunks[key], fused[key], dense_score, dense_at.get(key), b[1] if b else None,
                            b[0] if b else None, heading.get(key)))
        return Retrieval(query, scope, hits, ranked_dense, [key for key, _ in bm25],
                         (time.perf_counter() - started) * 1000)
