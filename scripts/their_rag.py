"""A team's own RAG service, for the bring-your-own-RAG benchmark: FastAPI, this project's retriever,
and a generator of its own (the sentence of the top chunks that shares the most words with the
question). It logs every answer twice, the two ways a team would hand its traces to distill:

- through `distill.TraceLogger` into the distill workspace `$DISTILL_HOME` (two lines in the handler);
- as OpenTelemetry GenAI spans (a retrieval span and a chat span per request) in OTLP JSON, one
  export request a line, to `$OTLP_FILE`, as an OpenTelemetry collector's file exporter writes them.

    THEIR_INDEX=bench/byo/their-rag DISTILL_HOME=bench/byo/distill OTLP_FILE=bench/byo/spans.json \\
        uvicorn their_rag:app --app-dir scripts --port 8100

POST /answer {query, scope?, timestamp?} -> {answer, citations, contexts, model}. `timestamp` lets a
replayed log keep its times. An empty answer is its refusal.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel

from distill import TraceLogger
from distill.rag.index import Retriever
from distill.workspace import Workspace

WORD = re.compile(r"[a-z0-9]+")
SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
STOP = set("a an the is are do does i my you your to of in on for and or can how what".split())
state: dict = {}


class Question(BaseModel):
    query: str
    scope: str | None = None
    timestamp: str | None = None


def generate(query: str, chunks: list[dict]) -> tuple[str, str | None]:
    """(answer, id of the chunk it came from): the sentence sharing most content words with the
    question, or nothing when no sentence shares two."""
    asked = set(WORD.findall(query.lower())) - STOP
    best, best_chunk, best_overlap = "", None, 1
    for chunk in chunks:
        for sentence in SENTENCE.split(chunk["text"]):
            overlap = len(asked & set(WORD.findall(sentence.lower())))
            if overlap > best_overlap:
                best, best_chunk, best_overlap = sentence.strip(" -#"), chunk["chunk_id"], overlap
    return best, best_chunk


def span(trace_id: str, name: str, start: float, end: float, attributes: dict) -> dict:
    def value(v):
        if isinstance(v, int):
            return {"intValue": str(v)}
        return {"stringValue": v if isinstance(v, str) else json.dumps(v)}

    return {"traceId": trace_id, "spanId": uuid.uuid4().hex[:16], "name": name, "kind": 3,
            "startTimeUnixNano": str(int(start * 1e9)), "endTimeUnixNano": str(int(end * 1e9)),
            "attributes": [{"key": k, "value": value(v)} for k, v in attributes.items() if v is not None]}


@asynccontextmanager
async def lifespan(app: FastAPI):
    home = Path(os.environ["THEIR_INDEX"])
    state["retriever"] = Retriever(Workspace(home), Workspace(home).config().index)
    state["logger"] = TraceLogger(os.environ["DISTILL_HOME"])
    state["otlp"] = open(os.environ["OTLP_FILE"], "a", encoding="utf-8")
    state["lock"] = threading.Lock()
    yield
    state["logger"].close()
    state["otlp"].close()


app = FastAPI(title="their RAG", lifespan=lifespan)


@app.post("/answer")
def answer(question: Question) -> dict:
    began = time.time()
    hits = state["retriever"].search(question.query, question.scope, k=3).hits
    chunks = [h.chunk for h in hits]
    retrieved = time.time()
    text, source = generate(question.query, chunks)
    contexts = [{"id": c["chunk_id"], "doc_id": c["doc_id"], "text": c["text"]} for c in chunks]
    citations = [source] if source else []
    finished = time.time()
    # 1. the two lines a team adds: distill's logger
    state["logger"].log(query=question.query, answer=text, contexts=contexts, citations=citations, scope=question.scope,
                        timestamp=question.timestamp, model="their-overlap-generator",
                        latency_ms=(finished - began) * 1000)
    # 2. what their OpenTelemetry instrumentation would export instead
    trace_id = uuid.uuid4().hex
    start = began if question.timestamp is None else _epoch(question.timestamp)
    spans = [span(trace_id, "retrieval their-index", start, start + retrieved - began,
                  {"gen_ai.operation.name": "retrieval", "gen_ai.retrieval.query.text": question.query,
                   "distill.scope": question.scope,
                   "gen_ai.retrieval.documents": [{"id": c["id"], "score": round(h.score, 4), "content": c["text"]}
                                                  for c, h in zip(contexts, hits)]}),
             span(trace_id, "chat their-overlap-generator", start + retrieved - began, start + finished - began,
                  {"gen_ai.operation.name": "chat", "gen_ai.request.model": "their-overlap-generator",
                   "gen_ai.output.messages": [{"role": "assistant", "parts": [{"type": "text", "content": text}]}]})]
    with state["lock"]:
        state["otlp"].write(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}) + "\n")
        state["otlp"].flush()
    return {"answer": text, "citations": citations, "contexts": contexts, "model": "their-overlap-generator"}


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
