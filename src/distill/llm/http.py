"""An OpenAI-compatible `/chat/completions` client: concurrent requests (a batching server such
as vLLM answers them together), log-probabilities when offered, retries with backoff on
connection errors, timeouts, 429 and 5xx.
"""

from __future__ import annotations

import time

import numpy as np

from distill.errors import DistillError, UpstreamError
from distill.llm.local import Generation


class RetryingClient:
    """An HTTP client that retries: each request is sent again up to `max_retries` times when the
    server cannot be reached, times out, or answers 429 or 5xx, waiting `backoff_s`, then twice
    that, and so on (with jitter); any other non-200 answer is an error at once. `map` keeps at most
    `max_concurrency` requests in flight. `setting` names the settings a user fixes in errors."""

    what = "the endpoint"

    def __init__(self, base_url: str, timeout_s: float, api_key: str | None = None, max_concurrency: int = 8,
                 max_retries: int = 4, backoff_s: float = 0.5, setting: str = "teacher.openai"):
        import httpx

        self.base_url, self.setting = base_url.rstrip("/"), setting
        self.max_concurrency, self.max_retries, self.backoff_s = max(1, max_concurrency), max_retries, backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers, limits=limits)
        self.retries = 0  # requests sent again, over this client's life

    def map(self, send, items: list) -> list:
        """`send(item)` for every item, at most `max_concurrency` at once, results in order."""
        if len(items) <= 1 or self.max_concurrency == 1:
            return [send(item) for item in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(send, items))

    def post(self, path: str, body: dict, timeout_s: float | None = None, hint: str = "the API key"):
        """The 200 response to POST `body` at `path`, after retries; DistillError otherwise."""
        import random

        import httpx

        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.8, 1.2))
            try:
                response = self._client.post(path or self.base_url,  # "": the base URL itself, no slash added
                                             json=body, **({"timeout": timeout_s} if timeout_s else {}))
            except httpx.HTTPError as err:
                problem = f"cannot reach {self.what} at {self.base_url} ({type(err).__name__})"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"{self.what} at {self.base_url} answered HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                raise DistillError(f"{self.what} at {self.base_url} answered HTTP {response.status_code} "
                                   f"({response.text[:120]!r}); check {hint}")
            return response
        raise UpstreamError(f"{problem}, {self.max_retries + 1} tries; start the server or set {self.setting}")


class ChatEndpoint(RetryingClient):
    """A client of one OpenAI-compatible chat-completions server, shared by the teacher's `openai`
    backend and the router's remote student; retries as `RetryingClient` does.

        endpoint = ChatEndpoint("http://127.0.0.1:8000/v1", "default", timeout_s=30)
        endpoint.complete_many([[{"role": "user", "content": "Hi"}]], max_tokens=8, stop=["\n"])
    """

    what = "the OpenAI-compatible endpoint"

    def __init__(self, base_url: str, model: str, timeout_s: float, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 4, backoff_s: float = 0.5,
                 url_setting: str = "teacher.openai.base_url", model_setting: str = "teacher.openai.model"):
        super().__init__(base_url, timeout_s, api_key, max_concurrency, max_retries, backoff_s, url_setting)
        self.model, self.model_setting = model, model_setting

    def complete_many(self, conversations: list[list[dict]], max_tokens: int, stop: list[str],
                      timeout_s: float | None = None) -> list[Generation]:
        return self.map(lambda c: self.complete(c, max_tokens, stop, timeout_s), conversations)

    def complete(self, messages: list[dict], max_tokens: int, stop: list[str],
                 timeout_s: float | None = None) -> Generation:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                "logprobs": True, "stop": stop}
        started = time.perf_counter()
        response = self.post("/chat/completions", body, timeout_s, hint=f"{self.model_setting} and the API key")
        return self._generation(response, started)

    def _generation(self, response, started: float) -> Generation:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise DistillError(f"the endpoint at {self.base_url} did not answer in chat-completions format; "
                               f"check {self.setting} (it should end in /v1)") from None
        logprobs = [t["logprob"] for t in ((choice.get("logprobs") or {}).get("content") or []) if "logprob" in t]
        usage = data.get("usage") or {}
        mean = float(np.mean(logprobs)) if logprobs else None
        return Generation(text=text, mean_logprob=mean, answer_score=float(np.exp(mean)) if mean is not None else None,
                          prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)), token_logprobs=logprobs,
                          elapsed_ms=(time.perf_counter() - started) * 1000)
