"""Retrieval quality and latency on PolicyQA dev, scoped by website, and latency at 100k chunks.

Gold for a (website, question) pair is every segment that answers it. The pairs are split by
website into a *tune* half (where settings are chosen) and a *report* half (the figure we quote),
so no setting is tuned on the queries it is reported on.

    python scripts/bench_retrieval.py                # quality table + latency on PolicyQA
    python scripts/bench_retrieval.py --synthetic 100000   # also latency at 100k synthetic chunks
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np

from distill.rag.index import Retriever, corpus_path, ingest
from distill.store.chunks import CorpusStore
from distill.workspace import Workspace

from policyqa import POLICYQA, require_policyqa, split_pairs

ROOT = Path(__file__).resolve().parents[1]


def workspace_for(name: str, chunk_words: int) -> Workspace:
    workspace = Workspace(ROOT / "bench" / name)
    workspace.home.mkdir(parents=True, exist_ok=True)
    (workspace.home / "distill.toml").write_text(f"[corpus]\nchunk_words = {chunk_words}\n")
    if not (workspace.index_dir / "dense.faiss").exists():
        ingest(workspace, POLICYQA, workspace.config(), fmt="squad")
    return workspace


def evaluate(retriever: Retriever, pairs: list[dict]) -> dict:
    recall1 = recall5 = mrr = 0.0
    latencies = []
    vectors = retriever.embed_queries([p["query"] for p in pairs])
    for pair, vector in zip(pairs, vectors):
        gold = pair["gold_doc_ids"]
        started = time.perf_counter()
        result = retriever.search(pair["query"], scope=pair["scope"], k=retriever.config.candidates,
                                  query_vector=vector)
        latencies.append((time.perf_counter() - started) * 1000)
        docs = list(dict.fromkeys(h.chunk["doc_id"] for h in result.hits))
        recall1 += bool(set(docs[:1]) & gold)
        recall5 += bool(set(docs[:5]) & gold)
        rank = next((i for i, d in enumerate(docs) if d in gold), None)
        mrr += 1 / (rank + 1) if rank is not None else 0
    n = len(pairs)
    return {"recall@1": recall1 / n, "recall@5": recall5 / n, "mrr": mrr / n,
            "p50_ms": statistics.median(latencies), "p95_ms": float(np.percentile(latencies, 95))}


def quality() -> None:
    halves = split_pairs()
    variants = [
        # (label, chunk_words, index overrides)
        ("dense only", 180, {"bm25_weight": 0.0}),
        ("bm25 only", 180, {"dense_weight": 0.0}),
        ("rrf 1:1", 180, {}),
        ("rrf 2:1 dense", 180, {"dense_weight": 2.0}),
        ("rrf 1:1, 60-word chunks", 60, {}),
    ]
    print(f"{'variant':28} {'half':7} {'pairs':>5} {'R@1':>6} {'R@5':>6} {'MRR':>6} {'p50 ms':>7} {'p95 ms':>7}")
    for label, chunk_words, overrides in variants:
        workspace = workspace_for(f"policyqa-{chunk_words}w", chunk_words)
        config = workspace.config({"index": overrides})
        retriever = Retriever(workspace, config.index)
        for half, pairs in halves.items():
            m = evaluate(retriever, pairs)
            print(f"{label:28} {half:7} {len(pairs):5d} {m['recall@1']:6.3f} {m['recall@5']:6.3f} {m['mrr']:6.3f} "
                  f"{m['p50_ms']:7.1f} {m['p95_ms']:7.1f}", flush=True)


def synthetic(n_chunks: int) -> None:
    """Latency at scale: n synthetic chunks built from PolicyQA sentences across 200 scopes.

    Embedding 100k chunks takes hours on 2 cores and does not change what a search costs, so the
    dense vectors here are random unit vectors; the chunk text (and so BM25's work) is real text."""
    import faiss

    workspace = Workspace(ROOT / "bench" / f"synthetic-{n_chunks}")
    if not (workspace.index_dir / "dense.faiss").exists():
        data = json.loads(POLICYQA.read_text())["data"]
        sentences = [s for a in data for p in a["paragraphs"] for s in p["context"].split(". ") if len(s) > 30]
        rng = random.Random(0)
        chunks = []
        for i in range(n_chunks):
            text = ". ".join(rng.sample(sentences, 3)) + "."
            chunks.append({"chunk_key": i, "chunk_id": f"doc{i}@v1#0", "doc_id": f"doc{i}", "version": 1,
                           "scope": f"s{i % 200}", "source": "synthetic", "heading": "", "text": text, "position": 0,
                           "content_hash": str(i), "injection_flag": None, "is_latest": True})
        store = CorpusStore(corpus_path(workspace))
        store.add([{"doc_id": c["doc_id"], "version": 1, "scope": c["scope"], "source": "synthetic", "title": None,
                    "effective_date": None, "content_hash": c["content_hash"]} for c in chunks], chunks)
        store.close()
        vectors = np.random.default_rng(0).standard_normal((n_chunks, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(384)
        index.add(vectors)
        faiss.write_index(index, str(workspace.index_dir / "dense.faiss"))
        (workspace.index_dir / "dense.json").write_text(json.dumps(
            {"embedding_model": workspace.config().index.embedding_model, "dim": 384, "chunks": n_chunks}))
    retriever = Retriever(workspace, workspace.config().index)
    queries = [p["query"] for p in split_pairs()["report"][:200]]
    vectors = retriever.embed_queries(queries)
    for label, scope_of in (("scoped (1 of 200 scopes)", lambda i: f"s{i % 200}"), ("unscoped", lambda i: None)):
        latencies = []
        for i, (query, vector) in enumerate(zip(queries, vectors)):
            started = time.perf_counter()
            retriever.search(query, scope=scope_of(i), query_vector=vector)
            latencies.append((time.perf_counter() - started) * 1000)
        print(f"{n_chunks} chunks, {label}: p50 {statistics.median(latencies):.1f} ms, "
              f"p95 {np.percentile(latencies, 95):.1f} ms (query embedding excluded, about 7 ms more)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=int, default=0, help="also time retrieval over this many synthetic chunks")
    args = parser.parse_args()
    require_policyqa()
    quality()
    if args.synthetic:
        synthetic(args.synthetic)


if __name__ == "__main__":
    main()
