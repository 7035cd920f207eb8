import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.errors import DistillError
from distill.rag.collect import collect, read_queries
from distill.store.traces import TraceStore

QUERIES = [
    {"query": "How many days do I have to request a refund?", "scope": "billing", "timestamp": "2026-10-01T10:00:00Z"},
    {"query": "Can I pay with PayPal?", "scope": "billing", "timestamp": "2026-10-01T11:00:00Z"},
    {"query": "How do I export a notebook?", "scope": "notes", "timestamp": "2026-10-02T09:00:00Z"},
    {"query": "How do I export a notebook?", "scope": "notes", "timestamp": "2026-10-02T09:00:00Z"},
    {"query": "What does offline mode keep?", "scope": "notes"},
]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


def test_collect_then_rerun_resumes_without_duplicates(corpus_workspace, tmp_path):
    path = write_lines(tmp_path / "q.jsonl", QUERIES)
    config = corpus_workspace.config()
    first = collect(corpus_workspace, config, path)
    assert first.queries_read == 5 and first.answered == 5 and not first.bad_lines
    second = collect(corpus_workspace, config, path)
    assert second.answered == 0 and second.skipped_existing == 5
    with TraceStore(corpus_workspace.traces_db) as store:
        rows = store.sql("SELECT query_id, count(*) AS n FROM traces GROUP BY 1 HAVING n > 1")
        assert rows == []
        runs = store.sql("SELECT answered, skipped_existing FROM collect_runs ORDER BY started_at")
        assert [(r["answered"], r["skipped_existing"]) for r in runs[-2:]] == [(5, 0), (0, 5)]
        (trace,) = store.sql("SELECT * FROM traces WHERE query = 'Can I pay with PayPal?'")
        assert trace["route"] == "rag" and trace["backend"] == "extractive"
        assert str(trace["asked_at"]).startswith("2026-10-01")


def test_bad_lines_are_reported_by_number_and_skipped(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [
        QUERIES[0], "{not json", {"scope": "billing"}, {"query": "x", "scope": "mars"},
        {"query": "y", "timestamp": "yesterday"}, QUERIES[1]])
    records, bad = read_queries(path, {"billing", "notes"})
    assert [r.line for r in records] == [1, 6]
    assert bad == [(2, "not valid JSON"), (3, "no 'query' field"), (4, "unknown scope 'mars'"),
                   (5, "timestamp 'yesterday' is not ISO 8601")]
    with pytest.raises(DistillError, match=r"q.jsonl:2: not valid JSON"):
        read_queries(path, {"billing", "notes"}, strict=True)


def test_identical_lines_are_distinct_queries_and_limit(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", QUERIES)
    records, _ = read_queries(path)
    assert len({r.query_id for r in records}) == 5  # lines 3 and 4 are two askings of one question
    assert len(read_queries(path, limit=2)[0]) == 2
    with pytest.raises(DistillError, match="does not exist"):
        read_queries(tmp_path / "missing.jsonl")


@pytest.mark.slow
def test_kill_9_mid_collect_then_rerun_loses_and_duplicates_nothing(corpus_workspace, tmp_path):
    """A real `distill collect` process is SIGKILLed mid-run; the rerun completes the log exactly once."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    for name in ("index",):
        os.symlink(corpus_workspace.home / name, workspace / name)
    # off: the answerability calibration would run before the first batch, and the kill must land mid-answering
    (workspace / "distill.toml").write_text("[collect]\ncommit_every = 8\n[teacher]\ncalibrate_answerability = false\n")
    questions = ["refund window", "PayPal payments", "export a notebook", "offline notes", "search shortcut"]
    lines = [{"query": f"{questions[i % 5]} question {i}", "scope": "notes" if i % 2 else "billing",
              "query_id": f"id-{i}"} for i in range(1500)]
    path = write_lines(tmp_path / "q.jsonl", lines)
    env = {**os.environ, "DISTILL_HOME": str(workspace)}
    command = [sys.executable, "-m", "distill.cli", "collect", str(path)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = workspace / "traces" / "traces.duckdb"
    deadline = time.time() + 120
    while time.time() < deadline and not (db.exists() and db.stat().st_size + _wal_size(db) > 400_000):
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with TraceStore(db) as store:
        after_kill = store.count()
    assert 0 < after_kill < len(lines), "the kill should land mid-run"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    with TraceStore(db) as store:
        assert store.count() == len(lines)
        assert store.sql("SELECT count(DISTINCT query_id) AS n FROM traces") == [{"n": len(lines)}]
        runs = store.sql("SELECT skipped_existing FROM collect_runs WHERE finished_at IS NOT NULL")
        assert runs == [{"skipped_existing": after_kill}]


def _wal_size(db: Path) -> int:
    wal = db.with_name(db.name + ".wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.mark.slow
def test_ray_engine_with_an_openai_teacher_resumes_like_the_local_one(corpus_workspace, tiny_model_server, tmp_path):
    """Ray Data actors on this machine, each calling `distill serve --model` as the teacher's LLM."""
    path = write_lines(tmp_path / "q.jsonl", [{**q, "query_id": f"ray-{i}"} for i, q in enumerate(QUERIES)] + ["not json"])
    config = corpus_workspace.config({"collect": {"engine": "ray", "ray_workers": 2, "commit_every": 2},
                                      "teacher": {"backend": "openai",
                                                  "openai": {"base_url": tiny_model_server, "max_new_tokens": 4}}})
    store_path = corpus_workspace.traces_db
    with TraceStore(store_path) as store:
        before = store.count()
    first = collect(corpus_workspace, config, path)
    assert (first.queries_read, first.answered, len(first.bad_lines)) == (5, 5, 1)
    again = collect(corpus_workspace, config, path)
    assert again.answered == 0 and again.skipped_existing == 5
    with TraceStore(store_path) as store:
        assert store.count() == before + 5
        rows = store.sql("SELECT backend, model, prompt_tokens, collect_run_id FROM traces WHERE collect_run_id = ?",
                         [first.run_id])
    assert len(rows) == 5 and {r["backend"] for r in rows} == {"openai"}
    assert any(r["prompt_tokens"] > 0 for r in rows)  # the endpoint answered (a thin-evidence query sends none)
    with pytest.raises(DistillError, match="collect.engine"):
        collect(corpus_workspace, config, path, engine="spark")
    with pytest.raises(DistillError, match="collect.ray_workers"):
        collect(corpus_workspace, corpus_workspace.config({"collect": {"engine": "ray", "ray_workers": 0}}), path)
