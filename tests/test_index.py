import json

import numpy as np
import pytest

from distill.errors import DistillError
from distill.rag.embed import OnnxQueryEncoder, embed, load_embedder
from distill.rag.index import Retriever, ingest
from distill.workspace import Workspace

from conftest import DOCS, REFUND_V2


def test_ingest_report_and_allowlist(corpus_workspace):
    retriever = Retriever(corpus_workspace, corpus_workspace.config().index)
    doc_ids = {c["doc_id"] for c in retriever.chunks}
    assert "notes/forum-tip" not in doc_ids  # community-forum is not allowlisted
    assert {"billing/refunds", "notes/export", "notes/shortcuts"} <= doc_ids
    flagged = [c for c in retriever.chunks if c["injection_flag"]]
    assert [c["doc_id"] for c in flagged] == ["notes/shortcuts"]


def test_hybrid_search_is_scoped(corpus_workspace):
    retriever = Retriever(corpus_workspace, corpus_workspace.config().index)
    result = retriever.search("how can I export a notebook as PDF?", scope="notes")
    assert result.hits[0].chunk["doc_id"] == "notes/export"
    assert all(h.chunk["scope"] == "notes" for h in result.hits)
    assert result.hits[0].bm25_rank is not None and result.hits[0].dense_rank is not None
    billing = retriever.search("how can I export a notebook as PDF?", scope="billing")
    assert all(h.chunk["scope"] == "billing" for h in billing.hits)
    with pytest.raises(DistillError, match="unknown scope 'nope'"):
        retriever.search("x", scope="nope")


def test_new_version_is_retrieved_by_default_old_kept(tmp_path, docs_file):
    workspace = Workspace(tmp_path)
    config = workspace.config()
    ingest(workspace, docs_file, config)
    v2 = tmp_path / "v2.jsonl"
    v2.write_text(json.dumps({**DOCS[0], "text": REFUND_V2, "version": 2}) + "\n")
    report = ingest(workspace, v2, config)
    assert report.new_versions == 1 and report.added == 0
    retriever = Retriever(workspace, config.index)
    latest = retriever.search("how many days do I have to ask for a refund?", scope="billing", k=10)
    refund_chunks = [h.chunk for h in latest.hits if h.chunk["doc_id"] == "billing/refunds"]
    assert refund_chunks and all(c["version"] == 2 for c in refund_chunks)
    every = retriever.search("how many days do I have to ask for a refund?", scope="billing", k=10, latest_only=False)
    assert {h.chunk["version"] for h in every.hits if h.chunk["doc_id"] == "billing/refunds"} == {1, 2}


def test_reingest_is_a_no_op_and_conflicts_are_refused(tmp_path, docs_file):
    workspace = Workspace(tmp_path)
    config = workspace.config()
    first = ingest(workspace, docs_file, config)
    again = ingest(workspace, docs_file, config)
    assert again.unchanged == first.documents_read and again.chunks_added == 0 and again.embedded == 0
    changed = tmp_path / "changed.jsonl"
    changed.write_text(json.dumps({**DOCS[0], "text": REFUND_V2}) + "\n")  # same id and version 1, new text
    with pytest.raises(DistillError, match="higher version"):
        ingest(workspace, changed, config)


def test_unversioned_documents_get_a_new_version_when_changed(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "faq.md").write_text("# FAQ\n\nSupport answers within 2 days.")
    ingest(workspace, docs, workspace.config())
    (docs / "faq.md").write_text("# FAQ\n\nSupport answers within 1 day.")
    report = ingest(workspace, docs, workspace.config())
    assert report.new_versions == 1
    retriever = Retriever(workspace, workspace.config().index)
    assert [c["version"] for c in retriever.chunks if c["is_latest"]] == [2]


def test_a_new_version_label_on_unchanged_text_is_not_a_new_version(tmp_path):
    """The next FAQ scrape labels every answer version 2; only the ones whose text changed are new,
    so the router keeps serving intents whose documents did not change."""
    workspace = Workspace(tmp_path / "ws")
    faq = tmp_path / "faq.jsonl"
    faq.write_text("\n".join(json.dumps({"id": f"cdc|{i}", "source": "CDC", "question": f"Q: Question {i}?", "versions": [
        {"version": 1, "answer": f"Answer {i}."}, {"version": 2, "answer": f"Answer {i}." if i else "Changed."}]})
        for i in range(2)) + "\n")
    ingest(workspace, faq, workspace.config(), fmt="faq-versions", version=1)
    report = ingest(workspace, faq, workspace.config(), fmt="faq-versions", version=2)
    assert report.new_versions == 1 and report.unchanged == 1
    latest = {c["doc_id"]: c["version"] for c in Retriever(workspace, workspace.config().index).chunks if c["is_latest"]}
    assert latest == {"cdc|0": 2, "cdc|1": 1}


def test_a_killed_ingest_is_repaired_by_rerunning(tmp_path, docs_file):
    workspace = Workspace(tmp_path)
    config = workspace.config()
    ingest(workspace, docs_file, config)
    (workspace.index_dir / "dense.faiss").unlink()  # as if killed after the chunks were committed
    (workspace.index_dir / "dense.json").unlink()
    with pytest.raises(Exception):
        Retriever(workspace, config.index)
    report = ingest(workspace, docs_file, config)
    assert report.embedded > 0
    assert Retriever(workspace, config.index).search("refund", scope="billing").hits


def test_no_corpus_is_a_clear_error(tmp_path):
    workspace = Workspace(tmp_path)
    with pytest.raises(DistillError, match="distill ingest"):
        Retriever(workspace, workspace.config().index)


def test_in_memory_bm25_equals_duckdb_match_bm25(corpus_workspace):
    """The in-memory scorer is DuckDB fts's own BM25, only faster: same scores, same order."""
    import duckdb

    from distill.store.db import extension_path

    retriever = Retriever(corpus_workspace, corpus_workspace.config().index)
    query = "how do I request a refund for an invoice?"
    mine = retriever.bm25.search(query, retriever._filter(None, False)[1], 50)
    con = duckdb.connect(str(corpus_workspace.index_dir / "corpus.duckdb"), read_only=True)
    con.execute(f"LOAD '{extension_path('fts')}'")
    reference = con.execute("""SELECT chunk_key, score FROM (SELECT chunk_key, fts_main_chunks.match_bm25(chunk_key, ?)
                               AS score FROM chunks) WHERE score IS NOT NULL ORDER BY score DESC""", [query]).fetchall()
    con.close()
    assert [k for k, _ in mine] == [k for k, _ in reference]
    assert [round(s, 6) for _, s in mine] == [round(s, 6) for _, s in reference]


def test_a_corpus_with_no_allowed_source_is_refused(tmp_path, docs_file):
    workspace = Workspace(tmp_path)
    config = workspace.config({"corpus": {"allowed_sources": ["policies"]}})
    with pytest.raises(DistillError, match="allowed source .*community-forum, help-center.*corpus.allowed_sources"):
        ingest(workspace, docs_file, config)


def test_onnx_query_encoder_gives_the_torch_vectors(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    model = load_embedder("all-MiniLM-L6-v2")
    encode = OnnxQueryEncoder.build(model)
    assert encode is not None and len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
    texts = ["how do I export my notes?", "a much longer question about refunds " * 20, "x"]
    cosines = (encode(texts) * embed(model, texts)).sum(axis=1)
    assert np.all(cosines > 0.9999)
    assert OnnxQueryEncoder.build(model) is not None  # the cached export is reused
    assert len(list((tmp_path / "onnx").iterdir())) == 1
