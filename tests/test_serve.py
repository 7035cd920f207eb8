import pytest
from fastapi.testclient import TestClient

from distill.errors import DistillError
from distill.serve.app import create_app
from distill.serve.router import Router
from distill.store.traces import TraceStore

from conftest import COVERED, REFUND_Q


@pytest.fixture(scope="module")
def workspace(routed_workspace):
    return routed_workspace


def chat(content, **extra):
    return {"model": "distill", "messages": [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": content}], **extra}


@pytest.fixture
def client(workspace):
    router = Router.from_workspace(workspace)
    with TestClient(create_app(router, workspace.config())) as client:
        yield client


def test_openai_chat_completion_with_route_and_citations(client):
    response = client.post("/v1/chat/completions", json=chat(REFUND_Q, metadata={"scope": "billing"}))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"] == COVERED[0][2]  # the intent's agreed answer, replayed:
    assert body["usage"]["total_tokens"] == 0 and body["distill"]["route"] == "replay"  # no tokens generated
    assert body["distill"]["citations"] == ["billing/refunds@v1#0"]
    assert response.headers["x-distill-route"] == body["distill"]["route"]
    risky = client.post("/v1/chat/completions", json=chat("What medication dosage is safe?"),
                        headers={"X-Distill-Scope": "billing"})
    assert risky.json()["distill"]["reason"] == "high_risk"
    literal = client.post("/v1/chat/completions", json=chat("error", metadata={"scope": "billing"}))
    assert literal.status_code == 200  # a question that reads like an internal marker is still a question
    assert client.get("/v1/models").json()["data"][0]["id"] == "distill"
    assert client.get("/health").json()["student"] == "v0001"
    metrics = client.get("/metrics").text
    assert 'distill_requests_total{reason="high_risk",route="rag"} 1.0' in metrics
    assert "distill_latency_seconds_bucket" in metrics


@pytest.mark.parametrize("body, status, message", [
    (b"not json", 400, "not JSON"),
    (b"\xff\xfe\x00", 400, "not UTF-8"),
    (b'{"messages": []}', 400, "non-empty list"),
    (b'{"messages": [{"role": "system", "content": "hi"}]}', 400, "no user message"),
    (b'{"messages": [{"role": "user", "content": ""}]}', 400, "router.max_query_chars"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": true}', 400, "stream"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "metadata": {"scope": "nope"}}', 400, "unknown scope"),
    (b'{"messages": [{"role": "user", "content": "' + b"x" * 70000 + b'"}]}', 413, "serve.max_body_bytes"),
])
def test_bad_requests_get_openai_style_errors(client, body, status, message):
    response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]["message"] and response.json()["error"]["type"]


def test_bearer_auth_when_a_key_is_configured(workspace, monkeypatch):
    monkeypatch.setenv("DISTILL_API_KEY", "s3cret")
    router = Router.from_workspace(workspace, log=False)
    with TestClient(create_app(router, workspace.config())) as client:
        assert client.get("/health").status_code == 200
        refused = client.post("/v1/chat/completions", json=chat("hi"))
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        allowed = client.post("/v1/chat/completions", json=chat("What medication dosage is safe?"),
                              headers={"Authorization": "Bearer s3cret", "X-Distill-Scope": "billing"})
        assert allowed.status_code == 200


def test_every_request_is_a_trace_after_shutdown(workspace):
    with TraceStore(workspace.traces_db) as store:
        before = store.count()
    router = Router.from_workspace(workspace)
    with TestClient(create_app(router, workspace.config())) as client:
        for i in range(12):
            assert client.post("/v1/chat/completions",
                               json=chat(f"What medication dosage is safe, take {i}?", scope="billing")).status_code == 200
    with TraceStore(workspace.traces_db) as store:
        assert store.count() == before + 12


def test_model_server_speaks_chat_completions_and_batches_concurrent_requests(tiny_lm_dir, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from distill.learn.student import ChatModel
    from distill.serve.app import create_model_app
    from distill.workspace import Workspace

    workspace = Workspace(tmp_path)
    model = ChatModel.load(str(tiny_lm_dir), workspace.models_dir)
    calls = []
    answer_batch = model.answer_batch
    model.answer_batch = lambda requests, max_time=None: calls.append(len(requests)) or answer_batch(requests, max_time)
    config = workspace.config({"router": {"batch_wait_s": 0.2}})
    with TestClient(create_model_app(model, config)) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == tiny_lm_dir.name
        body = {"model": "any", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "logprobs": True}
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: client.post("/v1/chat/completions", json=body), range(4)))
        assert [r.status_code for r in responses] == [200] * 4
        first = responses[0].json()
        assert first["object"] == "chat.completion" and first["usage"]["completion_tokens"] <= 5
        assert len(first["choices"][0]["logprobs"]["content"]) == first["usage"]["completion_tokens"]
        assert {r.json()["choices"][0]["message"]["content"] for r in responses} == \
            {first["choices"][0]["message"]["content"]}  # greedy: the same answer, batched or not
        assert max(calls) > 1  # concurrent requests shared a generate call
        bad = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    with pytest.raises(DistillError, match="save_pretrained folder"):
        ChatModel.load(str(tmp_path / "nope"), workspace.models_dir)


def test_the_documented_service_example_embeds_the_router_from_a_folder_path(workspace, monkeypatch):
    """examples/service.py, as docs/service.md shows it: `Router.from_workspace(path)` with a plain
    path string, answers over HTTP, and every answer is a trace once the app has shut down."""
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("DISTILL_HOME", str(workspace.home))
    spec = importlib.util.spec_from_file_location("service_example", Path(__file__).parents[1] / "examples" / "service.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with TraceStore(workspace.traces_db) as store:
        before = store.count()
    with TestClient(example.app) as client:
        answered = client.post("/ask", json={"question": REFUND_Q, "scope": "billing"}).json()
        risky = client.post("/ask", json={"question": "What medication dosage is safe?", "scope": "billing"}).json()
    assert answered["answer"] and answered["citations"] and answered["route"] == "replay"
    assert risky["route"] == "rag" and risky["reason"] == "high_risk"
    with TraceStore(workspace.traces_db) as store:
        assert store.count() == before + 2


@pytest.mark.slow
def test_several_worker_processes_serve_one_port_and_every_request_is_a_trace(workspace, tmp_path):
    """`distill serve --workers 2`: each process has its own router and trace segment; after a
    graceful shutdown every answered request is in the store."""
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    shutil.copytree(workspace.home, tmp_path / "ws", ignore=shutil.ignore_patterns("traces"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "distill.cli", "serve", "--workers", "2", "--port", str(port),
                               "--home", str(tmp_path / "ws")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        workers = set()
        while len(workers) < 2 and time.monotonic() < deadline:
            try:
                workers.add(httpx.get(f"{base}/health", timeout=5).json()["worker"])
            except httpx.HTTPError:
                time.sleep(0.5)
        assert len(workers) == 2, "two worker processes answer /health"

        def ask(i: int) -> int:
            return httpx.post(f"{base}/v1/chat/completions", timeout=60,
                              json=chat(f"{REFUND_Q} ({i})", metadata={"scope": "billing"})).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(ask, range(24))) == [200] * 24
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
    with TraceStore(tmp_path / "ws" / "traces" / "traces.duckdb") as store:
        assert store.sql("SELECT count(*) AS n FROM traces WHERE query LIKE ?", [f"{REFUND_Q} (%"]) == [{"n": 24}]
