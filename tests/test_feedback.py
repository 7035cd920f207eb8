import json
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from distill.cli.base import app
from distill.config import load_config
from distill.errors import DistillError
from distill.learn.curate import curate
from distill.rag.external import TraceLogger
from distill.serve.app import create_app
from distill.serve.router import Router
from distill.store.feedback import UnknownTrace, Verdicts, intent_key, score_of
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from conftest import COVERED, REFUND_A, REFUND_Q, make_trace


@pytest.fixture(scope="module")
def workspace(routed_workspace):
    return routed_workspace

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def rating(n, score, source, route="student", intent="c0", query="q", answer="a", minutes=0):
    return {"feedback_id": f"f{n}", "trace_id": f"t{n}", "score": score, "source": source,
            "created_at": T0 + timedelta(minutes=minutes), "route": route, "student_version": "v1",
            "intent_id": intent, "scope": "s", "query": query, "answer": answer}


def test_ratings_are_weighed_per_source_and_one_source_is_rate_limited():
    verdicts = Verdicts(load_config().feedback)
    intent = intent_key("v1", "c0")
    verdicts.add([rating(i, -1.0, "angry", minutes=i) for i in range(5)])  # five ratings, one vote
    assert verdicts.wrong(intent) and verdicts.withdrawn_intents("v1") == {"c0"}
    verdicts.add([rating(10, 1.0, "u1", minutes=10), rating(11, 1.0, "u2", minutes=11)])
    assert verdicts.score(intent) == pytest.approx(1 / 3) and not verdicts.wrong(intent)
    assert verdicts.add([rating(10, 1.0, "u1")]) == []  # the same rating again: weighed once

    limited = Verdicts(load_config(overrides={"feedback": {"max_per_source_per_hour": 3}}).feedback)
    counted = limited.add([rating(i, -1.0, "spammer", intent=f"c{i}", query=f"q{i}", minutes=i) for i in range(10)])
    assert len(counted) == 3 and limited.withdrawn_intents("v1") == {"c0", "c1", "c2"}
    assert len(limited.add([rating(20, -1.0, "spammer", intent="c9", minutes=70)])) == 1  # an hour later: counts again


def test_a_score_is_a_number_in_range_or_a_boolean():
    assert score_of(True) == 1.0 and score_of(False) == -1.0 and score_of(0.5) == 0.5
    for bad in (2, "good", None):
        with pytest.raises(DistillError, match="'score' must be a number from -1 to 1"):
            score_of(bad)


@pytest.fixture
def rated_ws(workspace, tmp_path):
    """A copy of the router tests' workspace (replaying its intent), following itself every 0.2 s."""
    home = tmp_path / "ws"
    shutil.copytree(workspace.home, home, ignore=shutil.ignore_patterns("traces"))
    (home / "distill.toml").write_text((home / "distill.toml").read_text() + "[router]\nreload_s = 0.2\n")
    return Workspace(home)


WORKER = """
import sys, time
from distill.serve.router import Router
router = Router.from_workspace(sys.argv[1])
print(router.answer(sys.argv[2], "billing").reason, flush=True)
sys.stdin.readline()
began = time.monotonic()
while (reason := router.answer(sys.argv[2], "billing").reason) == "served" and time.monotonic() - began < 10:
    time.sleep(0.02)
print(reason, round(time.monotonic() - began, 2), flush=True)
router.close()
"""


@pytest.mark.slow
def test_a_negative_rating_takes_the_intent_off_the_fast_path_in_this_router_and_in_another_process(rated_ws):
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(rated_ws.home), REFUND_Q], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    router = Router.from_workspace(rated_ws)
    try:
        assert worker.stdout.readline().strip() == "served"
        served = router.answer(REFUND_Q, "billing")
        assert served.route == "replay" and served.answer == COVERED[0][2]
        rated = router.feedback(served.trace_id, -1, comment="wrong entry", source="user-17")
        assert rated["counted"] and rated["intent_withdrawn"] and rated["answer_rated_wrong"]
        again = router.answer(REFUND_Q, "billing")
        assert (again.route, again.reason, again.checks["withdrawn_by"]) == ("rag", "withdrawn", "feedback")
        worker.stdin.write("go\n")
        worker.stdin.flush()
        reason, seconds = worker.stdout.readline().split()
        assert reason == "withdrawn" and float(seconds) <= 1.0  # within router.reload_s (0.2 s) and a request
        with pytest.raises(UnknownTrace, match="no answer has trace id 'nope'"):
            router.feedback("nope", -1)
    finally:
        worker.wait(timeout=30)
        router.close()
    result = CliRunner().invoke(app, ["sql", "SELECT source, comment FROM feedback", "--home", str(rated_ws.home)])
    assert result.exit_code == 0 and "user-17" in result.output and "wrong entry" in result.output, result.output
    with TraceStore(rated_ws.traces_db) as store:
        (row,) = store.sql("SELECT trace_id, score, route, intent_id FROM feedback")
    assert row == {"trace_id": served.trace_id, "score": -1.0, "route": "replay", "intent_id": "c0"}


def test_feedback_over_http_is_stored_and_a_bad_request_is_a_one_line_4xx(rated_ws):
    router = Router.from_workspace(rated_ws)
    with TestClient(create_app(router, rated_ws.config())) as client:
        answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": REFUND_Q}],
                                                           "metadata": {"scope": "billing"}}).json()
        trace_id = answer["distill"]["trace_id"]
        good = client.post("/v1/feedback", json={"trace_id": trace_id, "score": True, "source": "u1"})
        assert good.status_code == 200 and good.json()["score"] == 1.0 and good.json()["counted"]
        bad = client.post("/v1/feedback", json={"trace_id": trace_id, "score": 5})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "score"
        assert "\n" not in bad.json()["error"]["message"]
        unknown = client.post("/v1/feedback", json={"trace_id": "missing", "score": -1})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "trace_id"
        assert client.post("/v1/feedback", json={"trace_id": trace_id}).json()["error"]["param"] == "score"
        assert client.post("/v1/feedback", json={"trace_id": trace_id, "score": 1, "stars": 4}).status_code == 400
        assert client.post("/v1/feedback", content=b"{not json").status_code == 400
    with TraceStore(rated_ws.traces_db) as store:
        assert store.sql("SELECT trace_id, score, received_by FROM feedback") == [
            {"trace_id": trace_id, "score": 1.0, "received_by": "http"}]


def test_trace_logger_feedback_and_an_import_of_scores_rerun_adds_nothing(tmp_path):
    home = tmp_path / "ws"
    with TraceLogger(home) as logger:
        ids = [logger.log(query=f"question {i}?", answer="Yes.", contexts=[{"id": "kb#1", "text": "Yes, it is."}])
               for i in range(3)]
        rated = logger.feedback(ids[0], False, source="agent-3")
        with pytest.raises(UnknownTrace):
            logger.feedback("unknown", True)
    assert rated["score"] == -1.0 and rated["received_by"] == "logger"
    scores = tmp_path / "scores.jsonl"
    scores.write_text("\n".join([
        json.dumps({"id": "lf-1", "traceId": ids[1], "name": "user-feedback", "value": 1, "dataType": "BOOLEAN"}),
        json.dumps({"id": "lf-2", "traceId": ids[2], "name": "correctness", "value": -0.5, "dataType": "NUMERIC",
                    "authorUserId": "reviewer"}),
        json.dumps({"id": "lf-3", "traceId": "not-a-trace", "name": "user-feedback", "value": 1}),
        json.dumps({"id": "lf-4", "traceId": ids[2], "name": "stars", "value": 4}),
        "{broken",
    ]) + "\n")
    runner = CliRunner()
    first = runner.invoke(app, ["import", str(scores), "--home", str(home)])
    assert first.exit_code == 0, first.output
    assert "5 records read: 2 imported" in first.output and "3 bad" in first.output
    assert "not-a-trace" in first.output and "(r - 3) / 2" in first.output
    second = runner.invoke(app, ["import", str(scores), "--home", str(home)])
    assert "0 imported, 2 already stored" in second.output
    with TraceStore(Workspace(home).traces_db) as store:
        rows = store.sql("SELECT trace_id, score, source, received_by FROM feedback ORDER BY score")
    assert rows == [{"trace_id": ids[0], "score": -1.0, "source": "agent-3", "received_by": "logger"},
                    {"trace_id": ids[2], "score": -0.5, "source": "reviewer", "received_by": "import"},
                    {"trace_id": ids[1], "score": 1.0, "source": "anonymous", "received_by": "import"}]


def test_curation_never_trains_on_an_answer_rated_wrong(curated_home):
    with TraceStore(curated_home.traces_db) as store:
        (trace_id,) = [r["trace_id"] for r in store.sql("SELECT trace_id FROM traces WHERE query = ? LIMIT 1", [REFUND_Q])]
    before = curate(curated_home, curated_home.config())
    assert before.train > 0
    with TraceLogger(curated_home.home) as logger:
        logger.feedback(trace_id, -1, source="u1")
    after = curate(curated_home, curated_home.config())
    with TraceStore(curated_home.traces_db) as store:
        rejected = store.sql("SELECT t.query, t.answer FROM curation c JOIN traces t USING (trace_id) "
                             "WHERE c.run_id = ? AND c.reason = 'rated_wrong'", [after.run_id])
    # every trace giving that answer to that wording, not only the rated one; its paraphrase stays
    assert {(r["query"], r["answer"]) for r in rejected} == {(REFUND_Q, REFUND_A)} and len(rejected) == 4
    assert after.decisions["reject"]["rated_wrong"] == 4
    explained = CliRunner().invoke(app, ["curate", "--explain", trace_id, "--home", str(curated_home.home)])
    assert "rated_wrong" in explained.output


def test_the_teacher_answers_a_question_like_a_rated_one_from_the_next_chunk(corpus_workspace):
    from distill.rag.teacher import Teacher

    config = corpus_workspace.config()
    teacher = Teacher.from_workspace(corpus_workspace, config)
    question, alike = "Which payment methods do you accept?", "which payment methods do you accept"
    first = teacher.answer(question, "billing")
    assert first.citations[0].startswith("billing/payment-methods@")
    wrong = {**rating(1, -1.0, "u1", route="rag", query=question, answer=first.answer),
             "scope": "billing", "citations": first.citations}
    verdicts = Verdicts(config.feedback)
    verdicts.add([wrong])
    teacher.use_feedback(verdicts, config.feedback)
    for asked in (question, alike):
        again = teacher.answer(asked, "billing")
        assert first.citations[0] not in again.retrieved  # rated wrong: never the evidence for it again
        assert again.refused or again.citations[0] != first.citations[0]
    assert teacher.answer("Can I get my money back?", "billing").citations == \
        Teacher.from_workspace(corpus_workspace, config).answer("Can I get my money back?", "billing").citations
    verdicts.add([{**wrong, "feedback_id": "f2", "source": "u2", "score": 1.0},
                  {**wrong, "feedback_id": "f3", "source": "u3", "score": 1.0}])  # two others say it was right
    teacher.use_feedback(verdicts, config.feedback)
    assert teacher.answer(question, "billing").citations[0] == first.citations[0]


def test_tuning_learns_the_rated_pairs():
    from distill.rag.rerank import rated_pairs
    from distill.rag.tune import rated_triplets

    chunks = {c: {"chunk_id": c, "text": f"text of {c}", "heading": None} for c in ("a@v1#0", "b@v1#0", "c@v1#0")}
    evidence = {("s", "how do i pay", "a@v1#0"): -1.0, ("s", "how do i pay", "b@v1#0"): 1.0,
                ("s", "refund window", "c@v1#0"): 1.0, ("s", "refund window", "gone@v1#0"): -1.0,
                ("s", "tied", "a@v1#0"): 0.0}
    pairs = rated_pairs(evidence, chunks, 0.0)
    assert sorted((p["query"], p["text"], p["label"]) for p in pairs) == [
        ("how do i pay", "text of a@v1#0", 0.0), ("how do i pay", "text of b@v1#0", 1.0),
        ("refund window", "text of c@v1#0", 1.0)]
    rows = [{"scope": "s", "query": "Refund window?", "retrieved": ["c@v1#0", "a@v1#0"]}]
    triplets = rated_triplets(evidence, rows, chunks, 0.0)
    assert {(t["anchor"], t["positive"], t["negative"]) for t in triplets} == {
        ("how do i pay", "text of b@v1#0", "text of a@v1#0"),  # the chunk rated wrong is its negative
        ("refund window", "text of c@v1#0", "text of a@v1#0")}  # else the best retrieved one of another document


def test_refusals_users_rated_wrong_are_answerability_evidence(corpus_workspace, tmp_path):
    import os

    from distill.rag.index import dense_meta
    from distill.rag.teacher import ensure_answerability_fitted

    os.symlink(corpus_workspace.index_dir, tmp_path / "index")
    ws = Workspace(tmp_path)
    generation = int(dense_meta(ws).get("generation", 0))
    refused = [make_trace(f"r{i}", trace_id=f"r{i}", query=f"can i export notebook {i}?", answer="", citations=[],
                          refused=True, refusal_reason="not_answerable", answerability=0.01 * i,
                          corpus_generation=generation) for i in range(12)]
    with TraceStore(ws.traces_db) as store:
        store.append(refused)
    config = ws.config()
    before = ensure_answerability_fitted(ws, config, force=True)
    assert before.method == "probes" and before.evidence["rated_answerable"]["count"] == 0
    with TraceLogger(ws.home) as logger:
        for trace in refused:
            logger.feedback(trace.trace_id, -1, source=f"user-{trace.trace_id}")
    after = ensure_answerability_fitted(ws, config)  # new ratings: fitted again without being forced
    assert after.method == "ratings" and after.evidence["rated_answerable"]["count"] == 12
    assert "12 questions users rated answerable" in after.summary()
    assert after.threshold <= before.threshold
    assert ensure_answerability_fitted(ws, config) is None  # nothing new: the fit stands


def test_the_example_service_takes_a_thumbs_down(rated_ws, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("DISTILL_HOME", str(rated_ws.home))
    spec = importlib.util.spec_from_file_location("example_service", Path(__file__).parents[1] / "examples" / "service.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with TestClient(example.app) as client:
        answer = client.post("/ask", json={"question": REFUND_Q, "scope": "billing"}).json()
        assert answer["route"] == "replay"
        rated = client.post("/rate", json={"trace_id": answer["trace_id"], "helpful": False, "user": "u-17"})
        assert rated.json() == {"counted": True, "intent_withdrawn": True}
        assert client.post("/ask", json={"question": REFUND_Q, "scope": "billing"}).json()["reason"] == "withdrawn"
        assert client.post("/rate", json={"trace_id": "nope", "helpful": True}).status_code == 404
