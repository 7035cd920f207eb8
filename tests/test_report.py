import json
import shutil

import pytest
from typer.testing import CliRunner

from distill.cli.base import app
from distill.errors import DistillError
from distill.jobs.eval_sets import load_suite
from distill.jobs.evaluate import run_eval
from distill.jobs.report import write_report
from distill.rag.external import TraceLogger
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from conftest import SAMPLE


@pytest.mark.slow
def test_the_report_shows_the_systems_the_curve_and_what_changed(sample_workspace, tmp_path):
    shutil.copytree(sample_workspace.home, tmp_path / "ws")
    workspace = Workspace(tmp_path / "ws")
    with TraceStore(workspace.traces_db) as store:
        (rated,) = store.sql("SELECT trace_id FROM traces WHERE route = 'rag' AND NOT refused LIMIT 1")
    with TraceLogger(workspace.home) as logger:
        logger.feedback(rated["trace_id"], False, source="reviewer")
    first, figures = run_eval(workspace, workspace.config(), SAMPLE / "gold.jsonl", progress=False)
    assert figures["ratings"] == [{"route": "teacher", "rated": 1, "rated_wrong": 1, "share_rated_wrong": 1.0,
                                   "mean_score": -1.0}]
    page = write_report(workspace, out=tmp_path / "r1")
    text = page.read_text()
    for section in ("Systems side by side", "Cost-quality curve", "Why questions went to RAG", "by scope",
                    "What changed since the last run", "No earlier evaluation run", "Seen and novel wordings",
                    "What users said"):
        assert section in text
    assert text.count("<svg") == 3
    summary = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert summary["run_id"] == first and summary["headline"]["metric"] == "f1_vs_gold"
    stricter = workspace.config({"curate": {"high_risk_patterns": ["."]}})  # every question high-risk: all RAG
    second, figures = run_eval(workspace, stricter, SAMPLE / "gold.jsonl", progress=False)
    assert figures["systems"]["routed"]["served_share"] == 0.0
    summary = json.loads((write_report(workspace, out=tmp_path / "r2").parent / "report.json").read_text())
    assert summary["run_id"] == second and summary["previous_run_id"] == first
    assert any(c["system"] == "routed" and c["metric"] == "served_share" for c in summary["changes"])
    with pytest.raises(DistillError, match="no evaluation run nope"):
        write_report(workspace, "nope")


def test_the_regression_suite_passes_and_fails_by_case(sample_workspace, tmp_path):
    suite = tmp_path / "suite.jsonl"
    cases = [{"query": "How do I cancel my subscription?", "scope": "billing", "expect_refusal": False},
             {"query": "Can I store patient medical records in Acme Notes?", "scope": "notes", "expect_route": "rag",
              "expect_reason": "high_risk"},
             {"query": "Is there an Acme Calendar app?", "scope": "notes", "expect_route": "student"}]
    suite.write_text("\n".join(json.dumps(c) for c in cases) + "\n")
    result = CliRunner().invoke(app, ["eval", "--suite", str(suite), "--home", str(sample_workspace.home)])
    assert result.exit_code == 1, result.output
    assert "2 of 3 cases passed" in result.output
    suite.write_text('{"query": "x", "expect_route": "cache"}\n')
    with pytest.raises(DistillError, match="line 1 is not a JSON object with a query"):
        load_suite(suite)
