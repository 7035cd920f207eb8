"""A FastAPI service that embeds the distill router: replay or the student where it is safe, RAG everywhere else.

    DISTILL_HOME=ws uvicorn examples.service:app --port 8000
    curl -s localhost:8000/ask -H 'content-type: application/json' \
        -d '{"question": "How do I reset my password?", "scope": "notes"}'
    curl -s localhost:8000/rate -H 'content-type: application/json' \
        -d '{"trace_id": "<the answer's trace_id>", "helpful": false, "user": "u-17"}'

The router is built once, when the app starts, from the workspace folder ($DISTILL_HOME, or the
current directory); every answer is logged as a trace, and closing the app flushes them. Route,
reason and citations come back with the answer so the caller can show its sources, and its
trace id, with which the user's thumbs up or down reaches the router (`Router.feedback`): a
thumbs-down takes that answer off the fast path in every worker (docs/feedback.md).
"""

import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from distill.errors import DistillError
from distill.serve.router import Router
from distill.store.feedback import UnknownTrace


class Question(BaseModel):
    question: str
    scope: str | None = None


class Rating(BaseModel):
    trace_id: str
    helpful: bool
    user: str | None = None


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.router = Router.from_workspace(os.environ.get("DISTILL_HOME", "."))
    yield
    app.state.router.close()  # flushes the traces still queued


app = FastAPI(lifespan=lifespan)


@app.post("/ask")
async def ask(body: Question) -> dict:
    routed = await app.state.router.aanswer(body.question, body.scope)  # runs off the event loop
    return {"answer": routed.answer, "citations": routed.citations, "route": routed.route, "reason": routed.reason,
            "trace_id": routed.trace_id}


@app.post("/rate")
def rate(body: Rating) -> dict:
    try:
        rated = app.state.router.feedback(body.trace_id, body.helpful, source=body.user)
    except UnknownTrace as err:
        raise HTTPException(404, str(err)) from None
    except DistillError as err:
        raise HTTPException(400, str(err)) from None
    return {"counted": rated["counted"], "intent_withdrawn": rated["intent_withdrawn"]}
