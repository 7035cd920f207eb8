import fcntl
import json
import os
from datetime import date, datetime, timedelta, timezone

import pytest

from distill import registry
from distill.errors import DistillError
from distill.jobs.nightly import nightly
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from conftest import make_trace

pytestmark = pytest.mark.slow  # every test here trains and gates, or tunes, a model: `make test` runs them

START = datetime(2026, 10, 1, tzinfo=timezone.utc)
DAY = date(2026, 11, 1)
INTENTS = [("billing", "How many days do I have to request a refund?", "You can ask for a refund within 14 days.",
            "billing/refunds"),
           ("billing", "Which cards do you accept?", "We accept Visa, Mastercard and bank transfer.",
            "billing/payment-methods"),
           ("notes", "How many notes are kept offline?", "The desktop app keeps your last 500 notes available offline.",
            "notes/offline")]


def traces(days: range, prefix: str = ""):
    """Every intent asked once a day; `prefix` makes new wordings (and so a new training set)."""
    out = []
    for day in days:
        for n, (scope, query, answer, doc) in enumerate(INTENTS):
            query = prefix + query
            out.append(make_trace(f"{query}-{day}", scope=scope, query=query, answer=answer,
                                  citations=[f"{doc}@v1#0"], retrieved=[f"{doc}@v1#0"],
                                  cited_doc_versions=[{"doc_id": doc, "version": 1}],
                                  asked_at=START + timedelta(days=day, hours=n)))
    return out


@pytest.fixture
def workspace(corpus_workspace, tmp_path, tiny_lm_dir):
    os.symlink(corpus_workspace.index_dir, tmp_path / "index")
    with TraceStore(tmp_path / "traces" / "traces.duckdb") as store:
        store.append(traces(range(0, 6)) + traces(range(20, 22)))  # days 20-21: the held-out week
    (tmp_path / "distill.toml").write_text(
        f'[train]\nbase_model = "{tiny_lm_dir}"\nmax_steps = 3\nbatch_size = 3\n'
        f'[student]\nruntime = "fp32"\nmax_new_tokens = 4\n'
        f'[nightly]\nmin_examples = 1\n')
    return Workspace(tmp_path)


def runs(workspace):
    with TraceStore(workspace.traces_db) as store:
        return store.sql("SELECT status, reason, candidate, serving_before, figures FROM nightly_runs ORDER BY started_at")


def test_a_passing_gate_promotes_and_the_day_does_not_run_twice(workspace):
    result = nightly(workspace, workspace.config(), today=DAY)
    assert result.status == "promoted" and result.candidate == "v0001" and result.current == "v0001"
    assert set(result.figures) == {"curate", "train", "evaluate"}
    assert result.figures["evaluate"]["queries"] == 3  # one distinct held-out wording per covered intent
    manifest = registry.manifest(workspace.models_dir, "student", "v0001")
    assert manifest["eval"]["metric"] == "f1_vs_teacher" and manifest["eval"]["queries"] == 3
    assert manifest["eval"]["replayed"] == 3 and manifest["eval"]["f1_vs_teacher"] == 1.0  # every wording trained

    again = nightly(workspace, workspace.config(), today=DAY)
    assert again.status == "skipped" and "already ran" in again.reason and again.run_id == result.run_id
    forced = nightly(workspace, workspace.config(), today=DAY, force=True)
    assert forced.status == "kept" and "unchanged since v0001" in forced.reason
    assert [r["status"] for r in runs(workspace)] == ["promoted", "kept"]
    assert registry.versions(workspace.models_dir, "student") == ["v0001"]


def test_an_open_book_candidate_is_scored_and_calibrated_on_the_whole_held_out_window(workspace):
    from distill.learn.student_gate import CONFIDENCE_FILE

    result = nightly(workspace, workspace.config(), today=DAY)
    manifest = registry.manifest(workspace.models_dir, "student", "v0001")
    assert manifest["student_mode"] == "open_book" and result.status == "promoted", result.reason
    scores = result.figures["evaluate"]["scores"]["v0001"]
    evidence = json.loads((workspace.models_dir / "student" / "v0001" / CONFIDENCE_FILE).read_text())
    assert scores["queries"] == evidence["asked"] > 0 and "quoted" in scores and "threshold" in scores
    assert evidence["student_cost_usd"] > 0 and evidence["teacher_backend"] == "extractive"
    assert scores["threshold"] is None  # a random tiny student never earns a threshold: it will serve nothing
    # so the gate scores what the version serves: replay where a trained wording asks, the teacher elsewhere
    assert scores["f1_vs_teacher"] > scores["student_f1_vs_teacher"] and scores["replayed"] >= 1


def test_a_failed_gate_keeps_the_current_student(workspace):
    nightly(workspace, workspace.config(), today=DAY)
    scope, query, answer, doc = INTENTS[0]
    with TraceStore(workspace.traces_db) as store:  # new traffic: a new training set tomorrow, and the teacher
        store.append(traces(range(6, 8), prefix="Quick question: "))  # answering a held-out question otherwise
        store.append([make_trace("changed-answer", scope=scope, query=query, answer=answer.replace("14", "30"),
                                 citations=[f"{doc}@v1#0"], retrieved=[f"{doc}@v1#0"],
                                 cited_doc_versions=[{"doc_id": doc, "version": 1}], asked_at=START + timedelta(days=22))])
    strict = workspace.config({"nightly": {"teacher_margin": 0.0}})  # replay's 14 days is now below the teacher's 30
    result = nightly(workspace, strict, today=DAY + timedelta(days=1))
    assert result.status == "kept" and "nightly.teacher_margin" in result.reason
    assert result.candidate == "v0002" and result.current == "v0001"
    assert set(result.figures["evaluate"]["scores"]) == {"v0001", "v0002"}  # both scored on the same queries
    assert runs(workspace)[-1]["serving_before"] == "v0001"


def test_a_candidate_failing_the_regression_suite_is_not_promoted(workspace):
    (workspace.home / "suite.jsonl").write_text(
        '{"query": "How many days do I have to request a refund?", "scope": "billing", "expect_route": "student"}\n'
        '{"query": "Which cards do you accept?", "scope": "billing", "expect_refusal": false}\n')
    with_suite = workspace.config({"eval": {"suite": "suite.jsonl"}})
    result = nightly(workspace, with_suite, today=DAY)  # a trained wording is replayed, not generated
    assert result.status == "kept" and "failed 1 of 2 regression suite cases (eval.suite)" in result.reason
    assert "route replay (served), expected student" in result.reason
    assert result.current is None and result.figures["suite"]["cases"] == 2


def test_a_crash_mid_run_leaves_the_current_student_and_is_recorded(workspace, tmp_path):
    nightly(workspace, workspace.config(), today=DAY)
    with TraceStore(workspace.traces_db) as store:
        store.append(traces(range(6, 8), prefix="Quick question: "))
    broken = workspace.config({"train": {"base_model": str(tmp_path / "missing-model")}})
    with pytest.raises(DistillError, match="train.base_model"):
        nightly(workspace, broken, today=DAY + timedelta(days=1))
    assert registry.current(workspace.models_dir, "student") == "v0001"
    last = runs(workspace)[-1]
    assert last["status"] == "failed" and "train.base_model" in last["reason"] and '"curate"' in last["figures"]
    # the failed day is not 'done': the next run goes ahead
    assert nightly(workspace, workspace.config(), today=DAY + timedelta(days=1)).status == "promoted"


def test_too_few_examples_or_no_held_out_evidence_keeps_the_current_student(workspace):
    few = nightly(workspace, workspace.config({"nightly": {"min_examples": 50}}), today=DAY)
    assert few.status == "kept" and "nightly.min_examples" in few.reason and few.current is None
    blind = nightly(workspace, workspace.config({"curate": {"eval_days": 0}}), today=DAY, force=True)
    assert blind.status == "kept" and "no held-out traces" in blind.reason and blind.current is None


def test_two_runs_never_overlap(workspace):
    with open(workspace.home / "nightly.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DistillError, match="another nightly run holds"):
            nightly(workspace, workspace.config(), today=DAY)
    assert runs(workspace) == []


def test_a_missing_trace_store_is_one_line(tmp_path):
    with pytest.raises(DistillError, match="distill collect"):
        nightly(Workspace(tmp_path), Workspace(tmp_path).config(), today=DAY)


def test_a_central_machine_trains_from_the_lake_alone(workspace, tmp_path_factory):
    """The collector pushes its traces; the training machine has the corpus, the lake and no trace store."""
    lake = tmp_path_factory.mktemp("lake")
    settings = (workspace.home / "distill.toml").read_text() + \
        f'[lake]\ncatalog = "{lake}/t.ducklake"\ndata_path = "{lake}/data"\n'
    (workspace.home / "distill.toml").write_text(settings)
    with TraceStore(workspace.traces_db) as store:
        store.push_to_lake(workspace.lake(workspace.config()))
    central = Workspace(tmp_path_factory.mktemp("central"))
    os.symlink(workspace.index_dir, central.home / "index")
    (central.home / "distill.toml").write_text(settings)
    result = nightly(central, central.config(), today=DAY, from_lake=True)
    assert result.status == "promoted" and result.figures["curate"]["traces_seen"] == 24
    assert result.figures["evaluate"]["queries"] == 3
