import json
import shutil

import pytest

from distill.errors import DistillError
from distill.rag.index import Retriever, dense_meta
from distill.rag.tune import (
    held_out_queries,
    retrieval_scores,
    rollback_retriever,
    switch_retriever,
    training_triplets,
    tune_retriever,
)
from distill.workspace import Workspace


@pytest.fixture
def workspace(sample_workspace, tmp_path):
    """A copy of the curated sample workspace, tuning settings small enough for a test."""
    shutil.copytree(sample_workspace.home, tmp_path / "ws")
    with open(tmp_path / "ws" / "distill.toml", "a") as config:
        config.write("[tune]\nmin_pairs = 3\nepochs = 1.0\nbatch_size = 4\n")
    return Workspace(tmp_path / "ws")


def test_kept_traces_become_triplets_with_a_hard_negative_from_another_document():
    chunks = {c: {"chunk_id": c, "text": c, "heading": ""} for c in ("a@v1#0", "a@v1#1", "b@v1#0", "c@v2#0")}
    row = {"decision": "train", "held_out": False, "refused": False, "scope": "s", "query": "q?",
           "citations": ["a@v1#0"], "retrieved": ["a@v1#0", "a@v1#1", "b@v1#0", "c@v2#0"]}
    (triplet,) = training_triplets([row, dict(row), dict(row, decision="eval"), dict(row, held_out=True)], chunks)
    assert triplet == {"anchor": "q?", "positive": "a@v1#0", "negative": "b@v1#0"}  # not a@v1#1: same document
    held = held_out_queries([dict(row, held_out=True, query_id="x")], {"x": {"gold_doc_ids": ["b"]}})
    assert held == [{"query": "q?", "scope": "s", "docs": {"b"}}]
    assert held_out_queries([dict(row, held_out=True)], None)[0]["chunks"] == {"a@v1#0"}


@pytest.mark.slow
def test_a_tuned_retriever_is_versioned_and_switched_only_if_it_retrieves_better(workspace):
    config = workspace.config()
    before = dense_meta(workspace)
    result = tune_retriever(workspace, config, progress=False)
    assert result.pairs >= 3 and result.held_out > 0 and result.relevance == "teacher citations"
    assert (result.path / "README.md").exists() and (result.path / "model.safetensors").exists()
    manifest = json.loads((result.path / "distill.json").read_text())
    assert manifest["before"] == result.before and manifest["after"] == result.after
    assert (workspace.index_dir / manifest["dense"]["faiss"]).exists()
    better = result.after["recall_at_5"] > result.before["recall_at_5"] and result.after["mrr"] >= result.before["mrr"]
    assert result.switched == better
    assert dense_meta(workspace)["faiss"] == (manifest["dense"]["faiss"] if better else before["faiss"])


@pytest.mark.slow
def test_a_worse_retriever_is_kept_aside_and_a_switch_can_be_rolled_back(workspace):
    wrecked = workspace.config({"tune": {"learning_rate": 0.5}})  # training at this rate destroys the embedder
    before = dense_meta(workspace)
    result = tune_retriever(workspace, wrecked, progress=False)
    assert not result.switched and "kept aside, not switched" in result.reason
    assert result.after["recall_at_5"] < result.before["recall_at_5"]
    assert dense_meta(workspace) == before
    with pytest.raises(DistillError, match="no earlier retriever"):
        rollback_retriever(workspace, wrecked)
    switch_retriever(workspace, wrecked, result.version)  # by hand, past the gate
    retriever = Retriever(workspace, wrecked.index)
    assert retriever.dense["retriever_version"] == result.version
    assert retrieval_scores(retriever, held_out_queries_for(workspace))["recall_at_5"] == result.after["recall_at_5"]
    rollback_retriever(workspace, wrecked)
    assert dense_meta(workspace)["embedder"] == before["embedder"]
    assert Retriever(workspace, wrecked.index).index.ntotal == before["chunks"]


def test_too_few_pairs_is_one_clear_line(workspace):
    strict = workspace.config({"tune": {"min_pairs": 100000}})
    with pytest.raises(DistillError, match=r"tuning needs at least 100000 \(tune.min_pairs\)"):
        tune_retriever(workspace, strict, progress=False)


def held_out_queries_for(workspace):
    from distill.store.traces import TraceStore

    with TraceStore(workspace.traces_db) as store:
        return held_out_queries(store.retrieval_examples(), None)
