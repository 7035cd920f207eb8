"""`distill serve`: the router behind the OpenAI chat-completions API, so existing clients work.

    $ distill serve --home ws
    $ curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \\
        -d '{"model": "distill", "messages": [{"role": "user", "content": "How long is the refund window?"}],
             "metadata": {"scope": "billing"}}'
    {"id": "chatcmpl-...", "object": "chat.completion", "choices": [{"message": {"role": "assistant",
     "content": "..."}, "finish_reason": "stop", "index": 0}], "usage": {...},
     "distill": {"route": "replay", "reason": "served", "citations": [...], "checks": {...}}}

The question is the last user message; its scope comes from `metadata.scope` (or a top-level
`scope`, or the `X-Distill-Scope` header). Route and reason are also response headers
(`X-Distill-Route`, `X-Distill-Reason`). `POST /v1/feedback` rates an answer:

    $ curl -s localhost:8080/v1/feedback -H 'content-type: application/json' \\
        -d '{"trace_id": "<distill.trace_id of the answer>", "score": -1, "comment": "wrong entry", "source": "user-17"}'
    {"feedback_id": "...", "counted": true, "answer_rated_wrong": true, "intent_withdrawn": true, ...}

(`score`: a number from -1 to 1 or a boolean; an unknown trace is a 404, a bad field a 400 naming
it; feedback.py says what a rating changes.) Errors have OpenAI's shape: `{"error": {"message", "type",
"param", "code"}}`. `/health` says what is serving (and what its coverage decision rests on); `/metrics` is Prometheus text (requests by route
and reason, latency histograms). With `$DISTILL_API_KEY` set (`serve.api_key_env`), every request
but /health needs `Authorization: Bearer <key>`. Shutting down flushes every trace.

`distill serve --model M` (`create_model_app`) serves one model over the same API instead, with no
router: a stand-in for vLLM as the teacher's LLM or as the student's endpoint.
"""


import asyncio
import json
import logging
import os
import re
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from distill.config import HOME_ENV, Config
from distill.errors import DistillError, UpstreamError
from distill.rag.conversation import MAX_CONVERSATION_MESSAGES
from distill.serve.router import Router
from distill.store.feedback import UnknownTrace

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def create_app(router: Router, config: Config):
    """A FastAPI app serving `router`; closing the app closes the router (flushing its traces)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    registry = CollectorRegistry()
    requests = Counter("distill_requests", "Chat completions answered, by route and reason",
                       ["route", "reason"], registry=registry)
    errors = Counter("distill_request_errors", "Requests refused, by HTTP status", ["status"], registry=registry)
    latency = Histogram("distill_latency_seconds", "End-to-end answer time, by route", ["route"],
                        buckets=LATENCY_BUCKETS, registry=registry)
    ratings = Counter("distill_feedback", "Ratings received, by sign", ["sign"], registry=registry)
    overhead = Histogram("distill_router_seconds", "Time in the router's checks (generation excluded)",
                         buckets=LATENCY_BUCKETS, registry=registry)
    cfg = config.serve

    @asynccontextmanager
    async def lifespan(app):
        # Requests wait in worker threads (router.aanswer); asyncio's default pool has only
        # cpu_count + 4 of them, which would cap how many student questions can batch together.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=cfg.max_concurrency))
        yield
        router.close()

    app = FastAPI(title="distill", lifespan=lifespan)

    def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        errors.labels(str(status)).inc()
        return openai_error(status, message, kind, param)

    _guard(app, cfg, error)

    @app.get("/health")
    async def health():
        return {"status": "ok", "worker": os.getpid(), "student": router.version, "corpus_generation": router.generation,
                "model": cfg.model_name, "student_problem": router.student_problem,
                "coverage": router.decision.summary()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": 0,
                                            "owned_by": "distill", "student": router.version}]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await request.body()
        if len(body) > cfg.max_body_bytes:
            return error(413, f"request body over {cfg.max_body_bytes} bytes (serve.max_body_bytes)")
        try:
            payload = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            return error(400, "the request body is not UTF-8")
        except json.JSONDecodeError:
            return error(400, "the request body is not JSON")
        try:
            query, scope, history = _question(payload, request.headers.get("x-distill-scope"))
        except BadRequest as bad:
            return error(400, bad.message, param=bad.param)
        try:
            routed = await router.aanswer(query, scope, history or None)
        except UpstreamError as err:  # the RAG endpoint (teacher.http, teacher.openai) is down
            return error(502, str(err), "upstream_error")
        except DistillError as err:  # e.g. an unknown scope
            return error(400, str(err), param="metadata.scope" if "scope" in str(err) else None)
        except Exception:
            log.exception("answering failed")
            return error(500, "the server failed to answer; see its log", "server_error")
        requests.labels(routed.route, routed.reason).inc()
        latency.labels(routed.route).observe(routed.latency_ms / 1000)
        overhead.observe(routed.router_ms / 1000)
        if routed.reason == "input":
            return error(400, f"the question is empty or longer than {config.router.max_query_chars} characters "
                              f"(router.max_query_chars)", param="messages")
        content = routed.answer if routed.answer else "I don't know."
        response = {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": cfg.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": routed.prompt_tokens, "completion_tokens": routed.completion_tokens,
                      "total_tokens": routed.prompt_tokens + routed.completion_tokens},
            "distill": {"route": routed.route, "reason": routed.reason, "citations": routed.citations,
                        "refused": routed.refused, "student_version": routed.student_version,
                        "corpus_generation": routed.corpus_generation,
                        "checks": routed.checks, "trace_id": routed.trace_id,
                        "question": routed.query, "rewrite": routed.turn.method if routed.turn else None,
                        "latency_ms": round(routed.latency_ms, 1), "router_ms": round(routed.router_ms, 2)},
        }
        return JSONResponse(response, headers={"X-Distill-Route": routed.route, "X-Distill-Reason": routed.reason})

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        try:
            payload = json.loads((await request.body()).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return error(400, "the request body is not UTF-8 JSON")
        if not isinstance(payload, dict):
            return error(400, "the request body must be a JSON object")
        if "score" not in payload and "value" not in payload:
            return error(400, "'score' is missing: a number from -1 to 1 or a boolean", param="score")
        unknown = set(payload) - {"trace_id", "score", "value", "comment", "source", "name", "id", "timestamp"}
        if unknown:
            return error(400, f"unknown field {sorted(unknown)[0]!r}; send trace_id, score, comment, source, name, id",
                         param=sorted(unknown)[0])
        try:
            rated = await asyncio.to_thread(
                router.feedback, payload.get("trace_id"), payload.get("score", payload.get("value")),
                payload.get("comment"), payload.get("source"), payload.get("name"), payload.get("id"), "http")
        except UnknownTrace as err:
            return error(404, str(err), "not_found_error", param="trace_id")
        except DistillError as err:
            busy = "in use by another process" in str(err)
            named = re.match(r"'(\w+)'", str(err))
            return error(503 if busy else 400, str(err), "server_error" if busy else "invalid_request_error",
                         param=named.group(1) if named and not busy else None)
        ratings.labels("negative" if rated["score"] < 0 else "positive" if rated["score"] > 0 else "neutral").inc()
        return {key: (value.isoformat() if hasattr(value, "isoformat") else value) for key, value in rated.items()}

    return app


def openai_error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
    """An error in OpenAI's shape: {"error": {message, type, param, code}}."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)


def _guard(app, cfg, error) -> None:
    """Refuse a request without the bearer token ($serve.api_key_env, when set) or with a body
    declared over serve.max_body_bytes, before it is read."""
    from fastapi import Request

    api_key = os.environ.get(cfg.api_key_env) or None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error(401, "missing or wrong bearer token; send Authorization: Bearer <key>",
                             "authentication_error")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            return error(413, f"request body over {cfg.max_body_bytes} bytes (serve.max_body_bytes)")
        return await call_next(request)


def create_model_app(model, config: Config):
    """An OpenAI-compatible server for one local causal LM (`distill serve --model`), greedy only.

    It is what the teacher's `openai` backend and the router's `student.endpoint` call where no vLLM
    runs (this CPU machine, CI): concurrent requests are answered together, up to
    `student.max_batch` per `generate` call, as vLLM's continuous batching would. Answers carry
    per-token log-probabilities (`logprobs: true`) and token usage.

        $ distill serve --model models/student/current --port 8001
        $ distill serve --model SmolLM2-135M-Instruct --port 8002   # a teacher LLM for collection
    """
    from fastapi import FastAPI, Request

    from distill.serve.workers import StudentBatcher

    cfg = config.serve
    batcher = StudentBatcher(model, config.student.max_batch, config.router.batch_wait_s, None)

    @asynccontextmanager
    async def lifespan(app):
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=cfg.max_concurrency))
        yield
        batcher.close()

    app = FastAPI(title=f"distill model server: {model.name}", lifespan=lifespan)
    error = openai_error
    _guard(app, cfg, error)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model.name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0, "owned_by": "distill"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            payload = json.loads((await request.body()).decode("utf-8"))
            messages, max_tokens, stop = _chat_request(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return error(400, "the request body is not UTF-8 JSON")
        except BadRequest as bad:
            return error(400, bad.message, param=bad.param)
        try:
            generation = await asyncio.get_running_loop().run_in_executor(
                None, batcher.answer, messages, max_tokens, stop)
        except Exception:
            log.exception("generation failed")
            return error(500, "the server failed to generate; see its log", "server_error")
        choice = {"index": 0, "message": {"role": "assistant", "content": generation.text},
                  "finish_reason": "length" if generation.completion_tokens >= max_tokens else "stop"}
        if payload.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": "", "logprob": lp} for lp in generation.token_logprobs]}
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model.name, "choices": [choice],
                "usage": {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
                          "total_tokens": generation.prompt_tokens + generation.completion_tokens}}

    return app


def _chat_request(payload) -> tuple[list[dict], int, tuple[str, ...]]:
    """(messages, max_tokens, stop strings) of a chat-completions request for a model; raises BadRequest."""
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object")
    if payload.get("stream"):
        raise BadRequest("stream=true is not supported; send stream=false", "stream")
    messages = payload.get("messages")
    if (not isinstance(messages, list) or not messages or
            not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages)):
        raise BadRequest("'messages' must be a non-empty list of {role, content} with string content", "messages")
    max_tokens = payload.get("max_completion_tokens", payload.get("max_tokens", 64))
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 2048:
        raise BadRequest("'max_tokens' must be an integer from 1 to 2048", "max_tokens")
    stop = payload.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    return [{"role": m["role"], "content": m["content"]} for m in messages], max_tokens, tuple(stop)


class BadRequest(Exception):
    """A malformed chat request: answered with a 400 naming the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


def _question(payload, header_scope: str | None) -> tuple[str, str | None, list[dict]]:
    """(last user message, scope, the messages before it) from an OpenAI chat request; raises BadRequest."""
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object")
    if payload.get("stream"):
        raise BadRequest("stream=true is not supported; send stream=false", "stream")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content}", "messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise BadRequest("'messages' must be a list of {role, content}", "messages")
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise BadRequest("'messages' has no user message to answer", "messages")
    history = messages[:users[-1]]
    if len(history) > MAX_CONVERSATION_MESSAGES:
        raise BadRequest(f"'messages' holds {len(history)} messages before the last user message, over the "
                         f"{MAX_CONVERSATION_MESSAGES} a follow-up is read with; send the recent turns", "messages")
    content = messages[users[-1]].get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str):
        raise BadRequest("the last user message's 'content' must be a string or text parts", "messages")
    metadata = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
    scope = metadata.get("scope") or payload.get("scope") or header_scope
    if scope is not None and not isinstance(scope, str):
        raise BadRequest("'scope' must be a string", "metadata.scope")
    return content, scope, history


def serve(app, config: Config, host: str | None = None, port: int | None = None) -> None:
    """Run an app from `create_app` or `create_model_app` until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host or config.serve.host, port=port or config.serve.port, log_level="info")


def serve_workers(home, config: Config, workers: int, host: str | None = None, port: int | None = None) -> None:
    """Run `workers` processes behind one port, each with its own router over the workspace at
    `home` (`worker_app`): each logs to its own trace segment and follows the workspace's changes."""
    import uvicorn

    os.environ[HOME_ENV] = str(home)
    uvicorn.run("distill.serve.app:worker_app", factory=True, workers=workers, host=host or config.serve.host,
                port=port or config.serve.port, log_level="info")


def worker_app():
    """The app one `distill serve --workers N` process serves: the router of the workspace named
    by $DISTILL_HOME, watching it."""
    from distill.workspace import Workspace

    workspace = Workspace.resolve()
    config = workspace.config()
    return create_app(Router.from_workspace(workspace, config, watch=True), config)
