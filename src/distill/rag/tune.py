"""Tune the retriever on the traces: the teacher's citations are labelled retrieval data.

    result = tune_retriever(workspace, config, gold=Path("gold.jsonl"))
    result.before["recall_at_5"], result.after["recall_at_5"], result.switched  # (0.61, 0.68, True)

Every kept trace (curation decision `train`, before the cutoff) says: for this question, the
teacher answered from this chunk, and passed over the other chunks it retrieved. So the training
set is (question, cited chunk, a retrieved-but-unused chunk of another document) triplets, and the
loss is sentence-transformers' MultipleNegativesRankingLoss: the cited chunk must beat the hard
negative and every other chunk in the batch. Users' ratings add triplets (`rated_triplets`): the
chunk an answer was rated right for, against one rated wrong for the same wording. Training always starts from `index.embedding_model`
(the offline MiniLM), so a bad night cannot compound.

The candidate is saved as `models/retriever/vNNNN/` (a sentence-transformers folder with a model
card and `distill.json`), the corpus is re-embedded into `index/dense.vNNNN.faiss`, and both
retrievers (the active one and the candidate, BM25 fusion included) are scored on the held-out
traffic: the questions asked after the curation cutoff. Relevance is gold when a gold file is
given (a retrieved chunk of a gold document), else the chunks the teacher cited, which the active
retriever found by construction, so without gold the gate is conservative. The candidate is
switched on (`index/dense.json` replaced atomically; the previous one kept as
`dense.previous.json` for `--rollback`) only if recall@5 rises and MRR does not fall. The router
builds its coverage index with whatever retriever is active when it loads, so a restarted service
uses the new embedder for both.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from distill import registry
from distill.config import Config
from distill.errors import DistillError
from distill.metrics import normalize_query, rank_scores
from distill.progress import on_terminal
from distill.rag.corpus import chunk_doc_version
from distill.rag.embed import PACKAGED_MINILM, embed, embedder_path
from distill.rag.index import Retriever, chunk_embedding_text, corpus_path, dense_meta, sync_dense, write_dense_meta
from distill.store.chunks import CorpusStore
from distill.store.feedback import Verdicts
from distill.store.traces import TraceStore
from distill.workspace import Workspace

NAME = "retriever"  # models/retriever/vNNNN


@dataclass
class TuneResult:
    """What one tuning run did: the candidate version, whether the gate switched to it and why,
    what it learned from and was judged on, both sides' scores."""

    version: str
    switched: bool
    reason: str
    pairs: int
    held_out: int
    held_out_seen: int  # held-out questions whose wording was also a training question
    relevance: str  # 'gold' or 'teacher citations'
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    runtime_s: float = 0.0
    path: Path | None = None


def training_triplets(rows: list[dict], chunks: dict[str, dict]) -> list[dict]:
    """(anchor, positive, negative) texts from kept traces: the question, the first chunk the
    teacher cited, and the best-ranked retrieved chunk of another document it did not cite."""
    triplets, seen = [], set()
    for row in rows:
        if row["decision"] != "train" or row["held_out"] or row["refused"] or not row["citations"]:
            continue
        positive = row["citations"][0]
        cited_docs = {chunk_doc_version(c)[0] for c in row["citations"]}
        negative = next((c for c in row["retrieved"] if c not in row["citations"]
                         and chunk_doc_version(c)[0] not in cited_docs and c in chunks), None)
        key = (row["scope"], normalize_query(row["query"]), positive)
        if key in seen or positive not in chunks or negative is None:
            continue
        seen.add(key)
        triplets.append({"anchor": row["query"].strip(), "positive": chunk_embedding_text(chunks[positive]),
                         "negative": chunk_embedding_text(chunks[negative])})
    return triplets


def rated_triplets(evidence: dict[tuple, float], rows: list[dict], chunks: dict[str, dict],
                   withdraw_below: float) -> list[dict]:
    """Triplets from users' ratings (`Verdicts.rated_evidence`): for a wording whose answer was rated
    right, its chunk is the positive, and the negative is a chunk rated wrong for it, else the best
    retrieved chunk of another document in its traces. A wording rated only wrong has no positive
    to learn (the reranker learns it as a hard negative)."""
    by_wording: dict[tuple, dict[str, list[str]]] = {}
    for (scope, wording, chunk), score in sorted(evidence.items(), key=str):
        if chunk in chunks and (score > 0 or score < withdraw_below):
            by_wording.setdefault((scope, wording), {"right": [], "wrong": []})["right" if score > 0 else "wrong"].append(chunk)
    retrieved = {(row["scope"], normalize_query(row["query"])): row["retrieved"] for row in rows}
    triplets = []
    for (scope, wording), rated in by_wording.items():
        for positive in rated["right"]:
            doc = chunk_doc_version(positive)[0]
            negatives = rated["wrong"] + [c for c in retrieved.get((scope, wording), []) if chunk_doc_version(c)[0] != doc]
            negative = next((c for c in negatives if c in chunks), None)
            if negative is not None:
                triplets.append({"anchor": wording, "positive": chunk_embedding_text(chunks[positive]),
                                 "negative": chunk_embedding_text(chunks[negative])})
    return triplets


def held_out_queries(rows: list[dict], gold: dict[str, dict] | None) -> list[dict]:
    """Distinct held-out questions with what counts as relevant: gold documents, or cited chunks."""
    queries: dict[tuple, dict] = {}
    for row in rows:
        if not row["held_out"]:
            continue
        key = (row["scope"], normalize_query(row["query"]))
        if gold is not None:
            entry = gold.get(row["query_id"])
            if entry is None or not entry.get("gold_doc_ids") or key in queries:
                continue
            queries[key] = {"query": row["query"], "scope": row["scope"], "docs": set(entry["gold_doc_ids"])}
        elif not row["refused"] and row["citations"] and key not in queries:
            queries[key] = {"query": row["query"], "scope": row["scope"], "chunks": set(row["citations"])}
    return list(queries.values())


def learning_material(workspace: Workspace, config: Config) -> tuple[list[dict], Verdicts]:
    """What tuning the retriever or the reranker learns from: the latest curation run's traces with
    their retrieval (`TraceStore.retrieval_examples`), and users' verdicts on the chunks they read."""
    with TraceStore(workspace.traces_db) as store:
        rows = store.retrieval_examples()
        verdicts = Verdicts(config.feedback, store.feedback())
    if not rows:
        raise DistillError("no curation run to learn from; run `distill curate` (or `distill nightly`) first")
    return rows, verdicts


def judged_on(rows: list[dict], gold: dict[str, dict] | None, trained_questions: list[str],
              what: str) -> tuple[list[dict], int]:
    """The held-out questions `what` is judged on, and how many of them it was trained on in the
    same words (reported apart: a figure on seen wordings says little about new ones)."""
    queries = held_out_queries(rows, gold)
    if not queries:
        raise DistillError(f"no held-out question to judge {what} on; collect traffic after the curation cutoff, "
                           f"or pass --gold with the held-out questions' gold documents")
    trained = {normalize_query(q) for q in trained_questions}
    return queries, sum(normalize_query(q["query"]) in trained for q in queries)


def retrieval_scores(retriever: Retriever, queries: list[dict], k: int = 5) -> dict:
    """Recall@1, recall@k and MRR (within the top k) of `retriever` on `queries`."""
    ranks = []
    for q in queries:
        hits = retriever.search(q["query"], q["scope"], k=k).hits
        relevant = [hit.chunk["doc_id"] in q["docs"] if "docs" in q else hit.chunk["chunk_id"] in q["chunks"]
                    for hit in hits]
        ranks.append(relevant.index(True) + 1 if True in relevant else None)
    return rank_scores(ranks, f"recall_at_{k}")


def tune_retriever(workspace: Workspace, config: Config, gold: dict[str, dict] | None = None,
                   progress: bool = True) -> TuneResult:
    """Train a candidate embedder on the latest curation run's kept traces, gate it, maybe switch."""
    cfg = config.tune
    rows, verdicts = learning_material(workspace, config)
    active = Retriever(workspace, config.index)
    chunks = {c["chunk_id"]: c for c in active.chunks}
    triplets = training_triplets(rows, chunks) + rated_triplets(verdicts.rated_evidence(), rows, chunks,
                                                                config.feedback.withdraw_below)
    if len(triplets) < cfg.min_pairs:
        raise DistillError(f"only {len(triplets)} kept (question, cited chunk) pairs with a hard negative; "
                           f"tuning needs at least {cfg.min_pairs} (tune.min_pairs): collect more traffic")
    queries, seen = judged_on(rows, gold, [t["anchor"] for t in triplets], "a tuned retriever")

    started = time.time()
    version, staged = registry.staging(workspace.models_dir, NAME)
    folder = registry.student_dir(workspace.models_dir, NAME) / version
    shutil.move(str(_train(triplets, config, staged, progress)), str(folder))
    meta = _embed_corpus(workspace, config, folder, version, progress)
    before = retrieval_scores(active, queries)
    after = retrieval_scores(Retriever(workspace, config.index, dense=meta), queries)
    runtime = time.time() - started
    better = after["recall_at_5"] > before["recall_at_5"] and after["mrr"] >= before["mrr"]
    reason = (f"held-out recall@5 {before['recall_at_5']:.3f} -> {after['recall_at_5']:.3f}, "
              f"MRR {before['mrr']:.3f} -> {after['mrr']:.3f}")
    reason = f"switched: {reason}" if better else f"kept aside, not switched: {reason} (both must improve)"
    relevance = "gold" if gold is not None else "teacher citations"
    manifest = {"name": NAME, "version": version, "created_at": datetime.now(timezone.utc).isoformat(),
                "base_model": config.index.embedding_model, "curation_run_id": rows[0]["run_id"],
                "pairs": len(triplets), "held_out": len(queries), "held_out_seen": seen, "relevance": relevance,
                "before": before, "after": after, "switched": better, "runtime_s": round(runtime, 1),
                "training": {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate},
                "dense": meta}
    registry.complete(folder, manifest, _card(manifest))
    if better:
        switch_retriever(workspace, config, version, reason="tune-retriever gate")
    return TuneResult(version, better, reason, len(triplets), len(queries), seen, relevance, before, after,
                      runtime, folder)


def switch_retriever(workspace: Workspace, config: Config, version: str, reason: str = "manual") -> None:
    """Make a tuned version the active retriever (its corpus vectors were built when it was tuned)."""
    meta = registry.manifest(workspace.models_dir, NAME, version)["dense"]
    if not (workspace.index_dir / meta["faiss"]).exists():
        raise DistillError(f"index/{meta['faiss']} is missing; tune again to rebuild {version}'s corpus vectors")
    registry.promote(workspace.models_dir, NAME, version, reason=reason)
    _activate(workspace, config, meta)


def rollback_retriever(workspace: Workspace, config: Config) -> str:
    """Switch back to the dense index that was active before the last switch; returns its embedder."""
    previous_file = workspace.index_dir / "dense.previous.json"
    if not previous_file.exists():
        raise DistillError("no earlier retriever to roll back to (no index/dense.previous.json)")
    previous = json.loads(previous_file.read_text())
    _activate(workspace, config, previous)
    return previous["embedder"]


def _activate(workspace: Workspace, config: Config, meta: dict) -> None:
    """Make `meta` the active dense index, keeping the one it replaces as `dense.previous.json`,
    and embed the chunks ingested since its vectors were built."""
    (workspace.index_dir / "dense.previous.json").write_text(json.dumps(dense_meta(workspace), indent=2))
    write_dense_meta(workspace, meta)
    store = CorpusStore(corpus_path(workspace), read_only=True)  # only the FAISS file is written
    try:
        sync_dense(workspace, store, config.index, progress=False)
    finally:
        store.close()


def _train(triplets: list[dict], config: Config, out: Path, progress: bool) -> Path:
    import datasets
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    cfg = config.tune
    shutil.rmtree(out, ignore_errors=True)
    model = SentenceTransformer(embedder_path(config.index.embedding_model), device="cpu")  # a fresh copy
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out.with_suffix(".work")), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, warmup_steps=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no", report_to="none", logging_steps=10, seed=0, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not (progress and on_terminal()), dataloader_num_workers=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(triplets),
                                         loss=losses.MultipleNegativesRankingLoss(model))
    trainer.train()
    model.save(str(out))
    shutil.rmtree(out.with_suffix(".work"), ignore_errors=True)
    return out


def _embed_corpus(workspace: Workspace, config: Config, folder: Path, version: str, progress: bool) -> dict:
    """Every chunk embedded by the candidate into `index/dense.<version>.faiss`; its dense meta."""
    import faiss
    from sentence_transformers import SentenceTransformer

    store = CorpusStore(corpus_path(workspace), read_only=True)
    try:
        texts = [chunk_embedding_text(c) for c in store.chunks()]
    finally:
        store.close()
    vectors = embed(SentenceTransformer(str(folder), device="cpu"), texts, progress=progress)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    name = f"dense.{version}.faiss"
    faiss.write_index(index, str(workspace.index_dir / name))
    return {"embedding_model": config.index.embedding_model, "embedder": f"models/{NAME}/{version}",
            "faiss": name, "dim": int(vectors.shape[1]), "chunks": int(index.ntotal), "retriever_version": version}


def _card(manifest: dict) -> str:
    before, after = manifest["before"], manifest["after"]
    base = "sentence-transformers/all-MiniLM-L6-v2" if manifest["base_model"] == PACKAGED_MINILM else manifest["base_model"]
    return f"""---
base_model: {base}
library_name: sentence-transformers
tags: [distill, sentence-transformers, retrieval, MultipleNegativesRankingLoss]
---

# retriever {manifest['version']}

{base} fine-tuned by `distill tune-retriever` on {manifest['pairs']} (question, cited chunk, unused
retrieved chunk) triplets from the kept traces of curation run `{manifest['curation_run_id']}`, with
MultipleNegativesRankingLoss ({manifest['training']['epochs']} epochs, batch {manifest['training']['batch_size']},
lr {manifest['training']['learning_rate']}).

Held-out traffic ({manifest['held_out']} questions, {manifest['held_out_seen']} of them in a wording seen in
training; relevance: {manifest['relevance']}), hybrid retrieval with BM25 fusion:

| | recall@1 | recall@5 | MRR |
|---|---|---|---|
| before | {before['recall_at_1']} | {before['recall_at_5']} | {before['mrr']} |
| this version | {after['recall_at_1']} | {after['recall_at_5']} | {after['mrr']} |

Switched on: {manifest['switched']}. Corpus vectors: `index/{manifest['dense']['faiss']}`.
"""
