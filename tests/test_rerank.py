import json
import shutil
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from distill.cli.base import app
from distill.errors import DistillError
from distill.learn.curate import curate
from distill.rag import rerank
from distill.rag.index import Hit
from distill.rag.rerank import (
    Reranker,
    active_reranker,
    gate,
    held_out_scores,
    load_cross_encoder,
    reranker_off,
    rollback_reranker,
    trace_pairs,
    tune_reranker,
)
from distill.rag.teacher import Teacher
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from conftest import REFUND_A, REFUND_Q, START, make_trace, run_cli

pytestmark = pytest.mark.slow  # every test here trains and gates, or tunes, a model: `make test` runs them

REFUNDS, PAYMENTS = "billing/refunds@v1#0", "billing/payment-methods@v1#0"
EXPORT, OFFLINE, SHORTCUTS = "notes/export@v1#0", "notes/offline@v1#0", "notes/shortcuts@v1#0"
PAYPAL_Q, PLANE_Q = "Can I get my money back if I paid with PayPal?", "Can I read my notes on a plane?"
INTENTS = [  # (scope, question, answer, cited chunk, what the retriever ranks for it, best first)
    ("billing", REFUND_Q, REFUND_A, REFUNDS, [REFUNDS, PAYMENTS]),
    ("billing", "Which cards do you accept?", "We accept Visa, Mastercard and bank transfer.", PAYMENTS,
     [PAYMENTS, REFUNDS]),
    ("notes", "How do I export a notebook?", "You can export any notebook as Markdown or PDF.", EXPORT,
     [EXPORT, OFFLINE, SHORTCUTS]),
    ("notes", "How many notes stay available offline?", "The desktop app keeps your last 500 notes available offline.",
     OFFLINE, [OFFLINE, EXPORT, SHORTCUTS]),
    # the teacher answered these two from the chunk retrieval ranks second: what a reranker can learn
    ("billing", PAYPAL_Q, "Refunds go back to the original payment method.", REFUNDS, [PAYMENTS, REFUNDS]),
    ("notes", PLANE_Q, "The desktop app keeps your last 500 notes available offline.", OFFLINE,
     [EXPORT, OFFLINE, SHORTCUTS]),
]


def trace(scope, query, answer, cited, retrieved, day):
    return make_trace(f"{query}-{day}", scope=scope, query=query, answer=answer, citations=[cited],
                      cited_doc_versions=[{"doc_id": cited.split("@")[0], "version": 1}], retrieved=retrieved,
                      asked_at=START + timedelta(days=day))


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT sequence classifier (one logit) with the real MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from distill.rag.embed import embedder_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedder_path("all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)
    target = tmp_path_factory.mktemp("tiny_cross_encoder")
    BertForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture
def workspace(corpus_workspace, tiny_cross_encoder_dir, tmp_path):
    """The small corpus (its index copied: a switch writes there), six intents asked four times each
    and once more in the held-out week, curated; the tiny cross-encoder as the base, trained long
    and fast enough to learn the six."""
    shutil.copytree(corpus_workspace.index_dir, tmp_path / "index")
    (tmp_path / "distill.toml").write_text(
        '[corpus]\nallowed_sources = ["help-center"]\n'
        f'[rerank]\nbase_model = "{tiny_cross_encoder_dir}"\nmin_pairs = 10\nepochs = 30.0\nbatch_size = 4\n'
        f'learning_rate = 3e-3\n')
    traces = [trace(*intent, day=day) for intent in INTENTS for day in (0, 1, 2, 3, 20)]  # day 20: held out
    with TraceStore(tmp_path / "traces" / "traces.duckdb") as store:
        store.append(traces)
    workspace = Workspace(tmp_path)
    assert curate(workspace, workspace.config()).train == 24
    return workspace


def reversed_labels(monkeypatch):
    """Every training pair's label flipped: a reranker that learns to put the matching chunk last."""
    for builder in ("trace_pairs", "document_pairs"):
        original = getattr(rerank, builder)
        monkeypatch.setattr(rerank, builder, lambda *args, original=original: [
            dict(pair, label=1.0 - pair["label"]) for pair in original(*args)])


def hits(*chunk_ids):
    return [Hit({"chunk_id": c, "doc_id": c.split("@")[0], "text": c, "heading": None}, 0.0, 0.0, i, None, None)
            for i, c in enumerate(chunk_ids)]


def test_kept_traces_give_a_match_and_up_to_three_non_matches_from_other_documents():
    ids = ("a@v1#0", "a@v1#1", "b@v1#0", "c@v1#0", "d@v1#0", "e@v1#0")
    chunks = {c: {"chunk_id": c, "text": c, "heading": ""} for c in ids}
    row = {"decision": "train", "held_out": False, "refused": False, "scope": "s", "query": " q? ",
           "citations": ["a@v1#0"], "retrieved": list(ids)}
    pairs = trace_pairs([row, dict(row), dict(row, decision="eval"), dict(row, held_out=True)], chunks)
    assert pairs == [{"query": "q?", "text": "a@v1#0", "label": 1.0}] + [
        {"query": "q?", "text": c, "label": 0.0} for c in ("b@v1#0", "c@v1#0", "d@v1#0")]  # not a@v1#1: same document


def test_the_gate_switches_only_when_recall_at_1_rises_and_mrr_does_not_fall():
    before = {"recall_at_1": 0.5, "mrr": 0.7}
    switched, reason = gate(before, {"recall_at_1": 0.6, "mrr": 0.7})
    assert switched and reason == "switched: held-out recall@1 0.500 -> 0.600, MRR 0.700 -> 0.700"
    assert not gate(before, {"recall_at_1": 0.5, "mrr": 0.9})[0]  # no more questions answered from rank 1
    assert not gate(before, {"recall_at_1": 0.6, "mrr": 0.69})[0]
    assert "kept aside, not switched" in gate(before, {"recall_at_1": 0.4, "mrr": 0.6})[1]
    queries = [{"query": "q", "scope": None, "docs": {"b"}}, {"query": "r", "scope": None, "chunks": {"c@v1#0"}}]
    assert held_out_scores(queries, [hits("a@v1#0", "b@v1#0"), hits("c@v1#0")], k=5) == {
        "queries": 2, "recall_at_1": 0.5, "recall_at_5": 1.0, "mrr": 0.75}


def test_a_reranker_that_ranks_better_is_trained_versioned_switched_on_and_used_by_the_teacher(
        workspace, tiny_cross_encoder_dir):
    import torch

    config = workspace.config()
    result = tune_reranker(workspace, config, progress=False)
    assert result.pairs > 10 and result.held_out == 6 and result.held_out_seen == 6
    assert result.losses and result.losses[-1] < result.losses[0]
    base, trained = load_cross_encoder(str(tiny_cross_encoder_dir)), load_cross_encoder(str(result.path))
    assert not torch.equal(torch.nn.utils.parameters_to_vector(base.parameters()),
                           torch.nn.utils.parameters_to_vector(trained.parameters()))
    assert result.before["recall_at_1"] == 0.6667  # retrieval ranks the PayPal and plane answers second
    assert result.after["recall_at_1"] > result.before["recall_at_1"] and result.switched
    manifest = json.loads((result.path / "distill.json").read_text())
    assert manifest["before"] == result.before and manifest["after"] == result.after and manifest["switched"]
    assert manifest["pairs"] == manifest["pairs_from_traces"] + manifest["pairs_from_documents"] == result.pairs
    assert manifest["base_model"] == str(tiny_cross_encoder_dir) and (result.path / "README.md").exists()
    assert active_reranker(workspace) == {"version": "v0001", "path": "models/reranker/v0001", "candidates": 5,
                                          "switched_at": active_reranker(workspace)["switched_at"]}

    teacher = Teacher.from_workspace(workspace, config)
    assert teacher.reranker.version == "v0001"
    _, retrievals, evidences, _, _ = teacher._retrieve([(PAYPAL_Q, "billing")])
    assert [h.chunk["chunk_id"] for h in retrievals[0].hits] == [REFUNDS, PAYMENTS]
    assert all(0 < h.rerank_score < 1 for h in retrievals[0].hits) and evidences[0][0]["chunk_id"] == REFUNDS
    assert teacher.answer(PAYPAL_Q, "billing").retrieved == [REFUNDS, PAYMENTS]
    assert Teacher.from_workspace(workspace, workspace.config({"rerank": {"enabled": False}})).reranker is None


def test_a_reranker_that_ranks_worse_is_kept_aside(workspace, monkeypatch):
    reversed_labels(monkeypatch)
    result = tune_reranker(workspace, workspace.config(), progress=False)
    assert result.after["recall_at_1"] < result.before["recall_at_1"] and not result.switched
    assert "kept aside, not switched" in result.reason
    assert not (workspace.index_dir / "reranker.json").exists()
    assert Reranker.from_workspace(workspace, workspace.config()) is None
    assert Teacher.from_workspace(workspace, workspace.config()).reranker is None


def test_a_switch_can_be_rolled_back_and_switched_off(workspace):
    with pytest.raises(DistillError, match="no earlier reranker"):
        rollback_reranker(workspace)
    assert reranker_off(workspace) is None  # none was on
    version = tune_reranker(workspace, workspace.config(), progress=False).version
    assert rollback_reranker(workspace) is None and active_reranker(workspace) is None  # none was on before it
    assert rollback_reranker(workspace) == version == active_reranker(workspace)["version"]  # and back again
    from distill.rag.index import dense_meta

    generation = dense_meta(workspace)["generation"]
    assert reranker_off(workspace) == version and active_reranker(workspace) is None
    assert rollback_reranker(workspace) == version
    assert dense_meta(workspace)["generation"] == generation + 2  # each switch: running routers reload their teacher
    shutil.rmtree(workspace.models_dir / "reranker" / version)
    with pytest.raises(DistillError, match=r"models/reranker/v0001, which is missing.*rerank.enabled = false"):
        Reranker.from_workspace(workspace, workspace.config())


def test_the_command_prints_one_line_and_switches_off_and_back(workspace):
    runner = CliRunner()
    home = ["--home", str(workspace.home)]
    result = runner.invoke(app, ["tune-reranker", *home])
    assert result.exit_code == 0, result.output
    assert "v0001: " in result.stderr and "training pairs, 6 held-out questions" in result.stderr
    assert "switched: held-out recall@1 0.667 -> " in result.stderr
    assert "reranker v0001 switched off" in runner.invoke(app, ["tune-reranker", "--off", *home]).stderr
    assert "reranking with v0001 again" in runner.invoke(app, ["tune-reranker", "--rollback", *home]).stderr


def test_too_few_pairs_is_one_clear_line(workspace):
    strict = workspace.config({"rerank": {"min_pairs": 100000}})
    with pytest.raises(DistillError, match=r"needs at least 100000 \(rerank.min_pairs\)"):
        tune_reranker(workspace, strict, progress=False)
    settings = workspace.home / "distill.toml"
    settings.write_text(settings.read_text().replace("min_pairs = 10", "min_pairs = 100000"))
    result = run_cli("tune-reranker", home=workspace.home)
    assert result.returncode == 2 and result.stderr.startswith("error: only ")
    assert len(result.stderr.strip().splitlines()) == 1 and "rerank.min_pairs" in result.stderr
