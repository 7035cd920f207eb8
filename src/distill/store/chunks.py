"""The corpus tables, `index/corpus.duckdb`: documents and their versions, chunks (with the
injection flag and `is_latest`), the BM25 index, and the in-memory snapshot a router reads.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import duckdb

from distill.errors import DistillError
from distill.store.db import WAIT_S, Migration, connect, extension_path, migrate, transaction


def _c001_corpus(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE documents (
            doc_id VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            scope VARCHAR,
            source VARCHAR NOT NULL,
            title VARCHAR,
            effective_date VARCHAR,
            content_hash VARCHAR NOT NULL,
            ingested_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (doc_id, version)
        )""")
    con.execute("""
        CREATE TABLE chunks (
            chunk_key BIGINT PRIMARY KEY,
            chunk_id VARCHAR NOT NULL UNIQUE,
            doc_id VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            scope VARCHAR,
            source VARCHAR NOT NULL,
            heading VARCHAR,
            text VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            content_hash VARCHAR NOT NULL,
            injection_flag VARCHAR,
            is_latest BOOLEAN NOT NULL
        )""")


CORPUS_MIGRATIONS: list[Migration] = [_c001_corpus]


_CHUNK_COLUMNS = ["chunk_key", "chunk_id", "doc_id", "version", "scope", "source", "heading", "text",
                  "position", "content_hash", "injection_flag", "is_latest"]


class CorpusStore:
    """Documents and chunks with their versions, and the BM25 index over the chunks."""

    def __init__(self, path: Path, read_only: bool = False, wait_s: float | None = None):
        self.path = Path(path)
        self._con = connect(self.path, read_only=read_only, wait_s=WAIT_S if wait_s is None else wait_s)
        self._lock = threading.Lock()
        if not read_only:
            migrate(self._con, self.path, CORPUS_MIGRATIONS)
        self._con.execute(f"LOAD '{extension_path('fts')}'")

    def close(self) -> None:
        self._con.close()

    def document_versions(self) -> dict[str, int]:
        """doc_id -> latest ingested version."""
        rows = self._con.execute("SELECT doc_id, max(version) FROM documents GROUP BY doc_id").fetchall()
        return dict(rows)

    def scopes(self) -> set[str]:
        """The scopes of the ingested chunks."""
        return {r[0] for r in self._con.execute("SELECT DISTINCT scope FROM chunks WHERE scope IS NOT NULL").fetchall()}

    def document_hashes(self) -> dict[tuple[str, int], str]:
        """(doc_id, version) -> content hash of every stored document version."""
        rows = self._con.execute("SELECT doc_id, version, content_hash FROM documents").fetchall()
        return {(doc_id, version): content_hash for doc_id, version, content_hash in rows}

    def next_chunk_key(self) -> int:
        return self._con.execute("SELECT coalesce(max(chunk_key) + 1, 0) FROM chunks").fetchone()[0]

    def add(self, documents: Sequence[dict], chunks: Sequence[dict]) -> None:
        """Store new document versions and their chunks, refresh `is_latest` and the BM25 index."""
        import pyarrow as pa

        docs = pa.Table.from_pylist([{**d, "ingested_at": datetime.now(timezone.utc)} for d in documents])  # noqa: F841
        rows = pa.Table.from_pylist(list(chunks)).select(_CHUNK_COLUMNS) if chunks else None  # noqa: F841
        con = self._con
        with transaction(con):
            if documents:
                con.execute("INSERT INTO documents BY NAME SELECT * FROM docs")
            if chunks:
                con.execute(f"INSERT INTO chunks ({', '.join(_CHUNK_COLUMNS)}) SELECT * FROM rows")
            con.execute("""
                UPDATE chunks SET is_latest = (chunks.version = latest.version)
                FROM (SELECT doc_id, max(version) AS version FROM documents GROUP BY doc_id) AS latest
                WHERE chunks.doc_id = latest.doc_id""")
        con.execute("PRAGMA create_fts_index('chunks', 'chunk_key', 'heading', 'text', overwrite=1)")
        con.execute("CHECKPOINT")

    def chunks(self, keys: Sequence[int] | None = None) -> list[dict]:
        """Chunk rows by key (all chunks when `keys` is None), ordered by key."""
        cur = self._con.cursor()
        if keys is None:
            result = cur.execute("SELECT * FROM chunks ORDER BY chunk_key")
        else:
            result = cur.execute("SELECT * FROM chunks WHERE chunk_key IN (SELECT unnest(?)) ORDER BY chunk_key",
                                 [list(keys)])
        names = [d[0] for d in result.description]
        return [dict(zip(names, row)) for row in result.fetchall()]

    def fts_index(self) -> dict:
        """What DuckDB's fts extension built for BM25: postings (term id, chunk key, term frequency
        over heading and text), each term's id and document frequency, chunk lengths, corpus size
        and average length. `index.Bm25` scores queries from these in memory."""
        con = self._con.cursor()
        postings = con.execute("""
            SELECT t.termid, d.name AS chunk_key, count(*) AS tf
            FROM fts_main_chunks.terms AS t JOIN fts_main_chunks.docs AS d USING (docid)
            GROUP BY ALL""").fetchnumpy()
        lengths = con.execute("SELECT name AS chunk_key, len FROM fts_main_chunks.docs").fetchnumpy()
        terms = con.execute("SELECT term, termid, df FROM fts_main_chunks.dict").fetchall()
        num_docs, avgdl = con.execute("SELECT num_docs, avgdl FROM fts_main_chunks.stats").fetchone()
        return {"postings": postings, "lengths": lengths, "terms": terms, "num_docs": num_docs, "avgdl": avgdl}

    def chunk_texts(self, chunk_ids: Iterable[str]) -> dict[str, str]:
        rows = self._con.cursor().execute("SELECT chunk_id, text FROM chunks WHERE chunk_id IN (SELECT unnest(?))",
                                          [list(chunk_ids)]).fetchall()
        return dict(rows)

    def chunks_by_id(self, chunk_ids: Iterable[str]) -> dict[str, dict]:
        """chunk_id -> its row, at whatever version the id names (old versions included)."""
        result = self._con.cursor().execute("SELECT * FROM chunks WHERE chunk_id IN (SELECT unnest(?))", [list(chunk_ids)])
        names = [d[0] for d in result.description]
        return {row[names.index("chunk_id")]: dict(zip(names, row)) for row in result.fetchall()}

    def flagged_chunk_ids(self) -> set[str]:
        return {r[0] for r in self._con.execute("SELECT chunk_id FROM chunks WHERE injection_flag IS NOT NULL").fetchall()}

    def tokenizer(self) -> str:
        """The SQL of the fts index's tokenize macro (to tokenize queries the same way elsewhere)."""
        row = self._con.execute("SELECT macro_definition FROM duckdb_functions() WHERE schema_name = 'fts_main_chunks' "
                                "AND function_name = 'tokenize'").fetchone()
        if row is None:
            raise DistillError(f"{self.path} has no full-text index; rerun `distill ingest`")
        return row[0]


class CorpusSnapshot:
    """What retrieval reads from the corpus, copied into memory; the file is closed again at once.

    A service answers from its snapshot while `ingest` writes the next version of the file (DuckDB
    lets no process write a file another has open), and the router swaps to a new snapshot when
    one is complete (router.py). Queries are tokenized and stemmed by DuckDB in memory with the
    file's own tokenize macro, so BM25 matches the index exactly.

        snapshot = CorpusSnapshot(Path("ws/index/corpus.duckdb"))
        snapshot.query_terms("How do I export?")  # ['export', 'how', 'do', 'i']
    """

    def __init__(self, path: Path):
        store = CorpusStore(path, read_only=True)
        try:
            self.versions = store.document_versions()
            self.all_chunks = store.chunks()
            self.fts = store.fts_index()
            tokenize = store.tokenizer()
        finally:
            store.close()
        self.path = Path(path)
        self._texts = {c["chunk_id"]: c["text"] for c in self.all_chunks}
        self._con = duckdb.connect()
        self._con.execute(f"LOAD '{extension_path('fts')}'")
        self._con.execute("CREATE SCHEMA fts_main_chunks")
        self._con.execute(f"CREATE MACRO fts_main_chunks.tokenize(s) AS {tokenize}")
        self._vocabulary: frozenset[str] | None = None
        self._vocabulary_lock = threading.Lock()

    def document_versions(self) -> dict[str, int]:
        return dict(self.versions)

    def vocabulary(self) -> frozenset[str]:
        """Every word of the corpus's headings and text, stemmed as queries are, stop words
        included (the BM25 index leaves them out: 'plus' among them, as in 'the Plus plan'); built
        once, on first use."""
        with self._vocabulary_lock:
            if self._vocabulary is None:
                import pyarrow as pa

                texts = pa.table({"text": [f"{c.get('heading') or ''} {c['text']}" for c in self.all_chunks]})
                cur = self._con.cursor()
                cur.register("corpus_texts", texts)
                rows = cur.execute("SELECT DISTINCT stem(unnest(fts_main_chunks.tokenize(text)), 'porter') "
                                   "FROM corpus_texts").fetchall()
                self._vocabulary = frozenset(r[0] for r in rows if r[0])
            return self._vocabulary

    def chunks(self) -> list[dict]:
        return self.all_chunks

    def fts_index(self) -> dict:
        return self.fts

    def chunk_texts(self, chunk_ids: Iterable[str]) -> dict[str, str]:
        return {c: self._texts[c] for c in chunk_ids if c in self._texts}

    def query_terms(self, query: str) -> list[str]:
        """`query` tokenized and stemmed exactly as the fts index tokenized the chunks."""
        rows = self._con.cursor().execute(
            "SELECT DISTINCT stem(unnest(fts_main_chunks.tokenize(?)), 'porter')", [query]).fetchall()
        return [r[0] for r in rows if r[0]]
