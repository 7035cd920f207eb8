import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import ThreadingHTTPServer

import pytest

from distill.errors import DistillError
from distill.learn.curate import curate
from distill.rag.external import TraceLogger, import_file
from distill.rag.http_teacher import content_version
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from conftest import JsonHandler

REFUND = {"id": "kb/refunds#0", "doc_id": "kb/refunds", "text": "Refunds are available within 30 days of purchase. "
          "Open Billing and choose the invoice."}
PAYPAL = {"id": "kb/payments#0", "doc_id": "kb/payments", "text": "We accept Visa and Mastercard. PayPal is not supported."}
START = datetime(2026, 10, 1, tzinfo=timezone.utc)


def record(n: int, day: int, query="How long is the refund window?", answer="Refunds are available within 30 days of purchase.",
           contexts=(REFUND, PAYPAL), **extra) -> dict:
    return {"id": f"r-{n}", "query": query, "scope": "billing", "timestamp": (START + timedelta(days=day, hours=n)).isoformat(),
            "answer": answer, "contexts": list(contexts), "model": "their-llm", "latency_ms": 800, **extra}


def write(path, rows) -> None:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


def test_a_context_with_a_version_is_that_version_of_its_document(tmp_path):
    workspace = Workspace(tmp_path)
    path = tmp_path / "t.jsonl"
    write(path, [record(0, 0, contexts=[dict(REFUND, version=3)])])
    import_file(workspace, path)
    with TraceStore(workspace.traces_db) as store:
        (row,) = store.sql("SELECT citations, cited_doc_versions FROM traces")
    assert row["citations"] == ["kb/refunds@v3#0"] and row["cited_doc_versions"] == [{"doc_id": "kb/refunds", "version": 3}]


def test_json_lines_round_trip_into_traces_that_curation_trains_on(tmp_path):
    workspace = Workspace(tmp_path)
    path = tmp_path / "their-traces.jsonl"
    write(path, [record(n, n) for n in range(5)] + [record(9, 21)])
    report = import_file(workspace, path)
    assert (report.records, report.imported, report.bad) == (6, 6, [])
    with TraceStore(workspace.traces_db) as store:
        (row,) = store.sql("SELECT * FROM traces WHERE query_id = 'r-0'")
    version = content_version(REFUND["text"])
    # no version given: each context is its own document, versioned by its content hash
    assert row["citations"] == [f"kb/refunds#0@v{version}#0"]  # found by overlap: none were given
    assert row["cited_doc_versions"] == [{"doc_id": "kb/refunds#0", "version": version}]
    assert row["retrieved"] == [f"kb/refunds#0@v{version}#0", f"kb/payments#0@v{content_version(PAYPAL['text'])}#1"]
    assert row["groundedness"] == 1.0
    assert row["route_reason"] == "import" and row["model"] == "their-llm" and row["latency_ms"] == 800
    result = curate(workspace, workspace.config())  # no corpus here: the contexts are the documents
    assert result.train == 5 and result.examples == 1


def test_a_malformed_record_names_its_line_and_strict_stops(tmp_path):
    workspace = Workspace(tmp_path)
    path = tmp_path / "t.jsonl"
    write(path, [record(0, 0), "{not json", {"id": "x", "answer": "no query"}, record(1, 0, citations=["nope"]),
                 record(2, 0, contexts=[{"text": "no id"}])])
    report = import_file(workspace, path)
    assert report.imported == 1 and [line for line, _ in report.bad] == [2, 3, 4, 5]
    assert "not JSON" in report.bad[0][1] and "'query'" in report.bad[1][1] and "'nope'" in report.bad[2][1]
    with pytest.raises(DistillError, match=r"t.jsonl:2: not JSON"):
        import_file(Workspace(tmp_path / "other"), path, strict=True)
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(json.dumps(record(7, 0)).encode() + b"\n" + "caf\u00e9".encode("latin-1") + b"\n")
    with pytest.raises(DistillError, match="latin1.jsonl is not UTF-8 text"):
        import_file(Workspace(tmp_path / "other"), latin)
    with pytest.raises(DistillError, match="unknown import format 'csv'; use jsonl, otlp or auto"):
        import_file(Workspace(tmp_path / "other"), path, fmt="csv")
    cli = subprocess.run([sys.executable, "-m", "distill.cli", "import", str(path), "--strict", "--home", str(tmp_path / "c")],
                         capture_output=True, text=True)
    assert cli.returncode != 0 and "t.jsonl:2: not JSON" in cli.stderr + cli.stdout and "Traceback" not in cli.stderr


def _rejections(workspace: Workspace) -> set[str]:
    """The reasons curation rejected this workspace's traces for."""
    result = curate(workspace, workspace.config())
    return set(result.decisions.get("reject", {}))


def test_an_import_rerun_adds_nothing(tmp_path):
    workspace = Workspace(tmp_path)
    path = tmp_path / "t.jsonl"
    write(path, [record(n, 0) for n in range(3)])
    assert import_file(workspace, path).imported == 3
    again = import_file(workspace, path)
    assert (again.imported, again.already_stored) == (0, 3)
    with TraceStore(workspace.traces_db) as store:
        assert store.count() == 3


def otlp_span(trace_id: str, span_id: str, start_s: float, attributes: dict) -> dict:
    def value(v):
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        return {"stringValue": v if isinstance(v, str) else json.dumps(v)}

    return {"traceId": trace_id, "spanId": span_id, "name": attributes.get("gen_ai.operation.name", "span"),
            "startTimeUnixNano": str(int(start_s * 1e9)), "endTimeUnixNano": str(int((start_s + 0.4) * 1e9)),
            "attributes": [{"key": k, "value": value(v)} for k, v in attributes.items()]}


def test_otlp_genai_spans_are_joined_by_trace_id(tmp_path):
    """A retrieval span and a chat span per trace, as the GenAI conventions write them, in the JSON an
    OpenTelemetry collector's file exporter writes (one export request a line), and one in
    OpenInference's attributes (Phoenix)."""
    start = START.timestamp()
    genai = [otlp_span("t1", "a", start, {"gen_ai.operation.name": "retrieval", "distill.scope": "billing",
                                          "gen_ai.retrieval.query.text": "How long is the refund window?",
                                          "gen_ai.retrieval.documents": [{"id": REFUND["id"], "score": 0.9,
                                                                          "content": REFUND["text"]}]}),
             otlp_span("t1", "b", start + 0.5, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-x",
                                                "gen_ai.usage.input_tokens": 410, "gen_ai.usage.output_tokens": 9,
                                                "gen_ai.output.messages": [{"role": "assistant", "parts": [
                                                    {"type": "text", "content": "Refunds are available within 30 days of purchase."}]}]})]
    openinference = [otlp_span("t2", "c", start + 60, {"openinference.span.kind": "RETRIEVER", "input.value": "Do you take PayPal?",
                                                       "retrieval.documents.0.document.id": PAYPAL["id"],
                                                       "retrieval.documents.0.document.content": PAYPAL["text"]}),
                     otlp_span("t2", "d", start + 61, {"openinference.span.kind": "LLM", "llm.model_name": "gpt-x",
                                                       "output.value": "PayPal is not supported."})]
    orphan = [otlp_span("t3", "e", start + 90, {"gen_ai.operation.name": "chat", "gen_ai.output.messages": []})]
    path = tmp_path / "otel.json"
    write(path, [{"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]} for spans in (genai, openinference, orphan)])
    report = import_file(Workspace(tmp_path), path)
    assert report.imported == 2 and len(report.bad) == 1 and report.bad[0][0] == 3 and "'t3'" in report.bad[0][1]
    with TraceStore(Workspace(tmp_path).traces_db) as store:
        rows = {r["query_id"]: r for r in store.sql("SELECT * FROM traces")}
    assert rows["t1"]["query"] == "How long is the refund window?" and rows["t1"]["scope"] == "billing"
    assert rows["t1"]["cited_doc_versions"][0]["doc_id"] == REFUND["id"] and rows["t1"]["prompt_tokens"] == 410
    assert rows["t1"]["model"] == "gpt-x" and rows["t1"]["asked_at"] == START and rows["t1"]["latency_ms"] == pytest.approx(900)
    assert rows["t2"]["answer"] == "PayPal is not supported." and rows["t2"]["cited_doc_versions"][0]["doc_id"] == PAYPAL["id"]
    assert _rejections(Workspace(tmp_path)) <= {"infrequent"}  # accepted by every rule but frequency (two traces)


def test_a_changed_context_makes_the_traces_that_cited_the_old_text_stale(tmp_path):
    workspace = Workspace(tmp_path)
    changed = dict(REFUND, text=REFUND["text"].replace("30 days", "14 days"))
    path = tmp_path / "t.jsonl"
    write(path, [record(n, n) for n in range(4)] +
          [record(10 + n, 10 + n, answer="Refunds are available within 14 days of purchase.", contexts=[changed, PAYPAL])
           for n in range(3)])
    import_file(workspace, path)
    result = curate(workspace, workspace.config())
    with TraceStore(workspace.traces_db) as store:
        reasons = {r["query_id"]: r["reason"] for r in store.sql(
            "SELECT t.query_id, c.reason FROM curation c JOIN traces t USING (trace_id) WHERE c.run_id = ?", [result.run_id])}
    assert {reasons[f"r-{n}"] for n in range(4)} == {"stale_citation"}  # the 30-day answer is out of date
    assert {reasons[f"r-{10 + n}"] for n in range(3)} == {None}  # the 14-day one is trained on


def test_the_trace_logger_writes_from_any_thread_and_close_flushes(tmp_path):
    with TraceLogger(tmp_path) as logger:
        threads = [threading.Thread(target=lambda i=i: logger.log(query=f"refund window {i}?", answer=REFUND["text"],
                                                                   contexts=[REFUND], scope="billing", id=f"log-{i}"))
                   for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with pytest.raises(ValueError, match="query"):
            logger.log(query="", answer="x", contexts=[])
    with TraceStore(Workspace(tmp_path).traces_db) as store:  # opening folds the logger's segment in
        assert store.count() == 20
        assert {r["route_reason"] for r in store.sql("SELECT route_reason FROM traces")} == {"logged"}
    assert _rejections(Workspace(tmp_path)) <= {"infrequent"}


class _TheirRag(JsonHandler):
    """A team's own RAG service: answers every question from its one refunds context; `delay_s` and
    `status` make it slow or failing."""

    context, delay_s, status, seen, paths = dict(REFUND), 0.0, 200, 0, set()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen += 1
        type(self).paths.add(self.path)
        time.sleep(self.delay_s)
        answer = "Refunds are available within 14 days of purchase." if "14 days" in self.context["text"] else \
            "Refunds are available within 30 days of purchase."
        self.reply(self.status, {"answer": answer if "refund" in body["query"].lower() else "",
                                 "contexts": [self.context, PAYPAL], "model": "their-llm"})


@pytest.fixture
def their_rag():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TheirRag)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _TheirRag.context, _TheirRag.delay_s, _TheirRag.status, _TheirRag.seen = dict(REFUND), 0.0, 200, 0
    yield f"http://127.0.0.1:{server.server_port}/answer"
    server.shutdown()


def test_the_http_teacher_answers_with_citations_and_fails_clearly_on_timeouts_and_5xx(tmp_path, their_rag):
    from distill.rag.http_teacher import HttpTeacher

    config = Workspace(tmp_path).config({"teacher": {"backend": "http", "http": {"url": their_rag, "timeout_s": 0.5,
                                                                                 "max_retries": 1, "retry_backoff_s": 0.01}}})
    teacher = HttpTeacher(config)
    answer = teacher.answer("How long is the refund window?", "billing")
    assert not answer.refused and answer.cited_doc_versions == [{"doc_id": "kb/refunds#0",
                                                                 "version": content_version(REFUND["text"])}]
    assert answer.groundedness == 1.0 and answer.backend == "http" and answer.model == "their-llm"
    assert teacher.answer("Do you sell gift cards?", "billing").refusal_reason == "empty_answer"
    assert _TheirRag.paths == {"/answer"}  # the URL as configured, no slash added
    _TheirRag.delay_s = 2.0
    began = time.monotonic()
    with pytest.raises(DistillError, match=r"cannot reach the RAG endpoint .*ReadTimeout.*2 tries; .*teacher.http.url"):
        teacher.answer("How long is the refund window?", "billing")
    assert time.monotonic() - began < 4  # two tries of 0.5 s, never a hang
    _TheirRag.delay_s, _TheirRag.status, _TheirRag.seen = 0.0, 503, 0
    with pytest.raises(DistillError, match="answered HTTP 503, 2 tries"):
        teacher.answer("How long is the refund window?", "billing")
    assert _TheirRag.seen == 2


def test_a_router_falls_back_to_their_rag_and_a_changed_context_takes_the_intent_off_the_student(
        tmp_path, their_rag, tiny_lm_dir):
    from distill import registry
    from distill.learn.train import train
    from distill.serve.router import Router

    (tmp_path / "distill.toml").write_text(
        f'[teacher]\nbackend = "http"\n[teacher.http]\nurl = "{their_rag}"\n'
        f'[train]\nbase_model = "{tiny_lm_dir}"\nmax_steps = 2\nbatch_size = 1\n[student]\nruntime = "fp32"\n')
    workspace = Workspace(tmp_path)
    path = tmp_path / "t.jsonl"
    write(path, [record(n, n) for n in range(5)] + [record(9, 21)])
    import_file(workspace, path)
    curation = curate(workspace, workspace.config())
    registry.promote(workspace.models_dir, "student", train(workspace, workspace.config(), curation.dataset_path,
                                                              progress=False).version)
    manifest = registry.manifest(workspace.models_dir, "student", "v0001")  # their evidence is not readable here:
    assert manifest["student_mode"] == "replay" and manifest["metrics"]["steps"] == 0  # intents, no student trained
    from distill.jobs.eval_sets import held_out_items
    from distill.jobs.evaluate import evaluate_systems

    figures = evaluate_systems(workspace, workspace.config(), held_out_items(workspace), progress=False)
    assert "student" not in figures["systems"] and figures["systems"]["routed"]["replay_share"] == 1.0
    with Router.from_workspace(workspace, log=False, watch=False) as router:
        assert not router.student.generates and router.gate is None and router.batcher is None
        served = router.answer("How long is the refund window?", "billing")
        assert served.route == "replay" and served.reason == "served", served.checks
        other = router.answer("Do you take PayPal?", "billing")  # not learned: their RAG answers
        assert other.route == "rag" and other.reason == "coverage" and other.refused
        _TheirRag.context = dict(REFUND, text=REFUND["text"].replace("30 days", "14 days"))  # their document changed
        assert router.answer("Can I get a refund after two weeks?", "billing").route == "rag"  # RAG shows the change
        stale = router.answer("How long is the refund window?", "billing")
    assert stale.route == "rag" and stale.reason == "stale" and stale.checks["stale_documents"] == ["kb/refunds#0"]
    assert "14 days" in stale.answer
