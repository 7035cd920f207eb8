"""Rerank the teacher's retrievals with a cross-encoder trained on the traces, switched on only if it ranks better.

    result = tune_reranker(workspace, config, gold=gold_rows)
    result.before["recall_at_1"], result.after["recall_at_1"], result.switched  # (0.72, 0.81, True)
    Reranker.from_workspace(workspace, config).rerank("How long is the refund window?", hits)[0].rerank_score

The retriever embeds the question and each chunk apart and compares the vectors; a cross-encoder
reads the question and one chunk together, so it can see that "How long is the refund window?" is
answered by "within 30 days of purchase" and not by the chunk that merely repeats "refund" most.
That costs a transformer pass per (question, chunk), so it only reorders the retrieval's best
`rerank.candidates` hits, in one batch per teacher batch, before the evidence is chosen: whatever
it puts first is what the generator reads first.

It learns from two kinds of (question, chunk, label) pairs:

- the kept traces of the latest curation run (decision `train`, before the cutoff): the question
  and the first chunk the teacher cited are a match (1); the question and up to 3 retrieved chunks
  of other documents, which the teacher passed over, are not (0);
- the corpus itself: each question a document asks itself (`answerability.documents_questions`:
  titles and distinctive headings) matches its section's first chunk without the heading that holds
  its words (1: matched on meaning, as a user's rephrasing is), and not the chunks of other
  documents the retriever finds for it when that document is withheld (0).

Training starts from `rerank.base_model` (default `index.embedding_model`, the offline MiniLM,
which sentence-transformers turns into a sequence classifier with a new one-logit head), with
binary cross-entropy, so a bad night cannot compound. The candidate is saved as
`models/reranker/vNNNN/` (a sentence-transformers CrossEncoder folder, a model card and
`distill.json`) and judged on the held-out traffic, the questions asked after the curation cutoff,
exactly as `tune.py` judges a retriever: relevance is gold documents when a gold file is given,
else the chunks the teacher cited. Retrieval alone and retrieval + rerank are compared within the
top `index.top_k`; the candidate is switched on (`index/reranker.json` replaced atomically, the one
it replaces kept as `reranker.previous.json` for `--rollback`) only if recall@1 rises and MRR does
not fall (`gate`). Without gold the teacher's citations mostly sit at rank 1 already, so the gate
is conservative. `rerank.enabled = false`, or `--off`, puts the teacher back on retrieval order.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from distill import registry
from distill.config import Config
from distill.errors import DistillError
from distill.metrics import normalize_query, rank_scores
from distill.progress import on_terminal
from distill.rag import answerability
from distill.rag.corpus import chunk_doc_version
from distill.rag.embed import PACKAGED_MINILM, embedder_path
from distill.rag.index import Hit, Retrieval, Retriever, chunk_embedding_text, dense_meta, write_dense_meta
from distill.rag.tune import TuneResult, judged_on, learning_material
from distill.workspace import Workspace

NAME = "reranker"  # models/reranker/vNNNN
ACTIVE = "reranker.json"  # in <home>/index/: the switched-on version
PREVIOUS = "reranker.previous.json"  # the one it replaced ({"version": null}: none), for --rollback
NEGATIVES = 3  # non-matching chunks per question


@dataclass
class RerankResult(TuneResult):
    losses: list[float] = field(default_factory=list)


def trace_pairs(rows: list[dict], chunks: dict[str, dict]) -> list[dict]:
    """(question, chunk, label) pairs from kept traces: the first cited chunk is a match, up to
    NEGATIVES retrieved chunks of documents the teacher did not cite are not."""
    pairs, seen = [], set()
    for row in rows:
        if row["decision"] != "train" or row["held_out"] or row["refused"] or not row["citations"]:
            continue
        positive = row["citations"][0]
        key = (row["scope"], normalize_query(row["query"]), positive)
        if key in seen or positive not in chunks:
            continue
        seen.add(key)
        cited_docs = {chunk_doc_version(c)[0] for c in row["citations"]}
        others = [c for c in row["retrieved"] if chunk_doc_version(c)[0] not in cited_docs and c in chunks]
        query = row["query"].strip()
        pairs.append({"query": query, "text": chunk_embedding_text(chunks[positive]), "label": 1.0})
        pairs += [{"query": query, "text": chunk_embedding_text(chunks[c]), "label": 0.0} for c in others[:NEGATIVES]]
    return pairs


def rated_pairs(evidence: dict[tuple, float], chunks: dict[str, dict], withdraw_below: float) -> list[dict]:
    """(question, chunk, label) pairs from users' ratings (`Verdicts.rated_evidence`): the chunk an
    answer was rated right for is a match, one rated wrong is a hard negative."""
    return [{"query": wording, "text": chunk_embedding_text(chunks[chunk]), "label": 1.0 if score > 0 else 0.0}
            for (scope, wording, chunk), score in sorted(evidence.items(), key=str)
            if chunk in chunks and (score > 0 or score < withdraw_below)]


def document_pairs(retriever: Retriever) -> list[dict]:
    """(question, chunk, label) pairs from the corpus: each document's own question matches its
    section's first chunk, and not what the retriever finds for it in the other documents."""
    questions = answerability.documents_questions(retriever.chunks)
    if not questions:
        return []
    pairs = []
    for question, vector in zip(questions, retriever.embed_queries([q.text for q in questions])):
        # its section's text without the heading that holds its words: matched on meaning, as a user's question is
        own = answerability.without_heading_line(question.chunks[0]["text"], question.text)
        pairs.append({"query": question.text, "text": own, "label": 1.0})
        others = retriever.search(question.text, question.scope, query_vector=vector, withhold=question.doc_id).hits
        pairs += [{"query": question.text, "text": chunk_embedding_text(hit.chunk), "label": 0.0}
                  for hit in others[:NEGATIVES]]
    return pairs


def held_out_scores(queries: list[dict], rankings: list[list[Hit]], k: int) -> dict:
    """Recall@1, recall@k and MRR (within the top k) of one ranking of hits per held-out question
    (`tune.held_out_queries`: relevant documents, or relevant chunks)."""
    ranks = []
    for query, hits in zip(queries, rankings):
        relevant = [hit.chunk["doc_id"] in query["docs"] if "docs" in query else hit.chunk["chunk_id"] in query["chunks"]
                    for hit in hits[:k]]
        ranks.append(relevant.index(True) + 1 if True in relevant else None)
    return rank_scores(ranks, f"recall_at_{k}")


def gate(before: dict, after: dict) -> tuple[bool, str]:
    """(switch?, why): a reranker is worth its latency only if it puts the relevant chunk first
    more often (recall@1 rises) without pushing it down elsewhere (MRR does not fall)."""
    better = after["recall_at_1"] > before["recall_at_1"] and after["mrr"] >= before["mrr"]
    figures = (f"held-out recall@1 {before['recall_at_1']:.3f} -> {after['recall_at_1']:.3f}, "
               f"MRR {before['mrr']:.3f} -> {after['mrr']:.3f}")
    if better:
        return True, f"switched: {figures}"
    return False, f"kept aside, not switched: {figures} (recall@1 must rise and MRR must not fall)"


def tune_reranker(workspace: Workspace, config: Config, gold: dict[str, dict] | None = None,
                  progress: bool = True) -> RerankResult:
    """Train a candidate cross-encoder on the latest curation run's kept traces and the corpus's own
    questions, gate it on the held-out traffic, maybe switch it on."""
    cfg = config.rerank
    if cfg.candidates < 2:
        raise DistillError(f"rerank.candidates is {cfg.candidates}; set it to at least 2 (the hits the reranker reorders)")
    rows, verdicts = learning_material(workspace, config)
    retriever = Retriever(workspace, config.index)
    chunks = {c["chunk_id"]: c for c in retriever.chunks}
    from_traces = trace_pairs(rows, chunks) + rated_pairs(verdicts.rated_evidence(), chunks, config.feedback.withdraw_below)
    from_documents = document_pairs(retriever)
    pairs = from_traces + from_documents
    if len(pairs) < cfg.min_pairs:
        raise DistillError(f"only {len(pairs)} (question, chunk) pairs from the kept traces and the documents' own "
                           f"questions; the reranker needs at least {cfg.min_pairs} (rerank.min_pairs): collect more traffic")
    queries, seen = judged_on(rows, gold, [p["query"] for p in from_traces], "a reranker")

    started = time.time()
    version, staged = registry.staging(workspace.models_dir, NAME)
    folder = registry.student_dir(workspace.models_dir, NAME) / version
    trained, losses, steps = _train(pairs, config, staged, progress)
    shutil.move(str(trained), str(folder))
    k = config.index.top_k
    retrieved = [retriever.search(q["query"], q["scope"], k=k).hits for q in queries]
    reranker = Reranker(load_cross_encoder(str(folder)), cfg.candidates, version)
    before = held_out_scores(queries, retrieved, k)
    after = held_out_scores(queries, reranker.rerank_batch([(q["query"], hits) for q, hits in zip(queries, retrieved)]), k)
    switched, reason = gate(before, after)
    runtime = time.time() - started
    relevance = "gold" if gold is not None else "teacher citations"
    manifest = {"name": NAME, "version": version, "created_at": datetime.now(timezone.utc).isoformat(),
                "base_model": cfg.base_model or config.index.embedding_model, "curation_run_id": rows[0]["run_id"],
                "pairs": len(pairs), "pairs_from_traces": len(from_traces), "pairs_from_documents": len(from_documents),
                "positives": sum(p["label"] == 1.0 for p in pairs), "held_out": len(queries), "held_out_seen": seen,
                "relevance": relevance, "candidates": cfg.candidates, "top_k": k, "before": before, "after": after,
                "switched": switched, "reason": reason, "runtime_s": round(runtime, 1), "config": asdict(cfg),
                "training": {"steps": steps, "losses": losses}}
    registry.complete(folder, manifest, _card(manifest))
    if switched:
        switch_reranker(workspace, version, reason="tune-reranker gate")
    return RerankResult(version, switched, reason, len(pairs), len(queries), seen, relevance, before, after,
                        runtime, folder, losses)


def active_reranker(workspace: Workspace) -> dict | None:
    """What `index/reranker.json` switched on: {version, path (relative to the workspace),
    candidates, switched_at}; None when no reranker is on."""
    path = workspace.index_dir / ACTIVE
    return json.loads(path.read_text()) if path.exists() else None


def switch_reranker(workspace: Workspace, version: str, reason: str = "manual") -> None:
    """Make a trained version the active reranker, reordering as many hits as it was judged on."""
    meta = registry.manifest(workspace.models_dir, NAME, version)
    registry.promote(workspace.models_dir, NAME, version, reason=reason)
    folder = registry.student_dir(workspace.models_dir, NAME) / version
    _activate(workspace, {"version": version, "path": str(folder.relative_to(workspace.home)),
                          "candidates": meta["candidates"], "switched_at": datetime.now(timezone.utc).isoformat()})


def rollback_reranker(workspace: Workspace) -> str | None:
    """Switch back to what was active before the last switch; returns its version (None: no reranker)."""
    path = workspace.index_dir / PREVIOUS
    if not path.exists():
        raise DistillError(f"no earlier reranker to roll back to (no index/{PREVIOUS})")
    previous = json.loads(path.read_text())
    if previous.get("version") is None:
        _activate(workspace, None)
        return None
    if not (workspace.home / previous["path"]).is_dir():
        raise DistillError(f"{previous['path']} is missing; it cannot be switched back on (`distill tune-reranker` "
                           f"trains a new one)")
    _activate(workspace, previous)
    return previous["version"]


def reranker_off(workspace: Workspace) -> str | None:
    """Stop reranking (`--rollback` turns it back on); returns the version switched off, None if none was on."""
    current = active_reranker(workspace)
    if current is None:
        return None
    _activate(workspace, None)
    return current["version"]


def _activate(workspace: Workspace, active: dict | None) -> None:
    """Make `active` the reranker (None: none), keeping the one it replaces as `reranker.previous.json`.
    The corpus generation moves on, so running routers reload their teacher with it (`router.reload_s`)."""
    _write_json(workspace.index_dir / PREVIOUS, active_reranker(workspace) or {"version": None})
    if active is None:
        (workspace.index_dir / ACTIVE).unlink(missing_ok=True)
    else:
        _write_json(workspace.index_dir / ACTIVE, active)
    if meta := dense_meta(workspace):
        write_dense_meta(workspace, meta)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


@lru_cache(maxsize=4)
def load_cross_encoder(folder: str):
    """A saved CrossEncoder whose `predict` gives sigmoid scores, shared: a version folder never changes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise here
    return CrossEncoder(folder, device="cpu", activation_fn=torch.nn.Sigmoid())


class Reranker:
    """The switched-on cross-encoder: reorders the first `candidates` hits of a retrieval by its
    score of (question, chunk); the hits after them keep their place and are not scored."""

    def __init__(self, model, candidates: int, version: str | None = None):
        self.model, self.candidates, self.version = model, candidates, version
        self._lock = threading.Lock()  # a fast tokenizer is not safe to call from two threads at once

    @classmethod
    def from_workspace(cls, workspace: Workspace, config: Config) -> "Reranker | None":
        """The workspace's active reranker; None when none is switched on or `rerank.enabled` is false."""
        active = active_reranker(workspace) if config.rerank.enabled else None
        if active is None:
            return None
        folder = workspace.home / active["path"]
        if not folder.is_dir():
            raise DistillError(f"index/{ACTIVE} names {active['path']}, which is missing; run `distill tune-reranker "
                               f"--rollback` or `--off`, or set rerank.enabled = false")
        return cls(load_cross_encoder(str(folder)), int(active["candidates"]), active["version"])

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        """`hits` with the first `candidates` reordered best first by the cross-encoder, their `rerank_score` set."""
        return self.rerank_batch([(query, hits)])[0]

    def rerank_batch(self, retrievals: list[tuple[str, list[Hit]]]) -> list[list[Hit]]:
        """`rerank` for several (query, hits), scored in one `predict` call."""
        pairs = [(query, chunk_embedding_text(hit.chunk)) for query, hits in retrievals for hit in hits[:self.candidates]]
        with self._lock:
            scores = iter(self.model.predict(pairs, show_progress_bar=False).tolist() if pairs else [])
        reranked = []
        for _, hits in retrievals:
            head = [replace(hit, rerank_score=float(next(scores))) for hit in hits[:self.candidates]]
            head.sort(key=lambda hit: hit.rerank_score, reverse=True)  # stable: a tie keeps retrieval order
            reranked.append(head + hits[self.candidates:])
        return reranked

    def rerank_retrievals(self, retrievals: list[Retrieval]) -> None:
        """Rerank each retrieval's hits in place, its share of the time added to its latency."""
        started = time.perf_counter()
        for retrieval, hits in zip(retrievals, self.rerank_batch([(r.query, r.hits) for r in retrievals])):
            retrieval.hits = hits
        share_ms = (time.perf_counter() - started) * 1000 / max(len(retrievals), 1)
        for retrieval in retrievals:
            retrieval.latency_ms += share_ms


def base_model_path(config: Config) -> str:
    """The folder training starts from: `rerank.base_model`, or `index.embedding_model` when empty."""
    name = config.rerank.base_model
    if not name:
        return embedder_path(config.index.embedding_model)
    if name != PACKAGED_MINILM and not (Path(name) / "config.json").exists():
        raise DistillError(f"rerank.base_model '{name}' is neither '{PACKAGED_MINILM}' nor a model folder with "
                           f"config.json; set rerank.base_model ('' = index.embedding_model)")
    return embedder_path(name)


def _train(pairs: list[dict], config: Config, out: Path, progress: bool) -> tuple[Path, list[float], int]:
    """A fresh cross-encoder trained on `pairs` and saved to `out`; (out, logged losses, steps)."""
    import datasets
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
        losses,
    )

    cfg = config.rerank
    shutil.rmtree(out, ignore_errors=True)
    model = CrossEncoder(base_model_path(config), num_labels=1, max_length=cfg.max_length, device="cpu")
    args = CrossEncoderTrainingArguments(
        output_dir=str(out.with_suffix(".work")), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, warmup_steps=0.1, save_strategy="no", report_to=[], logging_steps=10,
        logging_first_step=True, seed=0, use_cpu=True, disable_tqdm=not (progress and on_terminal()), dataloader_num_workers=0)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                                  loss=losses.BinaryCrossEntropyLoss(model))
    trainer.train()
    model.save_pretrained(str(out))
    shutil.rmtree(out.with_suffix(".work"), ignore_errors=True)
    logged = [round(float(entry["loss"]), 4) for entry in trainer.state.log_history if "loss" in entry]
    return out, logged, trainer.state.global_step


def _card(manifest: dict) -> str:
    before, after, cfg, training = manifest["before"], manifest["after"], manifest["config"], manifest["training"]
    base = "sentence-transformers/all-MiniLM-L6-v2" if manifest["base_model"] == PACKAGED_MINILM else manifest["base_model"]
    k = manifest["top_k"]
    return f"""---
base_model: {base}
library_name: sentence-transformers
pipeline_tag: text-ranking
tags: [distill, cross-encoder, reranker, BinaryCrossEntropyLoss]
---

# reranker {manifest['version']}

A cross-encoder trained from {base} by `distill tune-reranker`, with binary cross-entropy
({cfg['epochs']} epochs, {training['steps']} steps, batch {cfg['batch_size']}, lr {cfg['learning_rate']},
{cfg['max_length']} tokens), on {manifest['pairs']} (question, chunk) pairs, {manifest['positives']} of them matches:

- {manifest['pairs_from_traces']} from the kept traces of curation run `{manifest['curation_run_id']}`: the first
  cited chunk matches, retrieved chunks of other documents do not;
- {manifest['pairs_from_documents']} from the documents' own questions (titles and headings): their section
  matches, other documents' chunks retrieved for them do not.

It reorders the best {manifest['candidates']} of the top {k} hybrid-retrieval hits. Held-out traffic
({manifest['held_out']} questions, {manifest['held_out_seen']} of them in a wording seen in training; relevance:
{manifest['relevance']}):

| | recall@1 | recall@{k} | MRR |
|---|---|---|---|
| retrieval alone | {before['recall_at_1']} | {before[f'recall_at_{k}']} | {before['mrr']} |
| + this reranker | {after['recall_at_1']} | {after[f'recall_at_{k}']} | {after['mrr']} |

Switched on: {manifest['switched']} ({manifest['reason']}).
"""
