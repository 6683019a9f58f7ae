"""``InferenceEngine`` over an OpenAI-compatible HTTP server: vLLM, or ``python -m eigen_jax.serve``.

Token ids in, token ids and logprobs out, through ``POST /v1/completions`` with a token-id
``prompt`` and vLLM's ``return_token_ids``: no text round trip, so episodes stay token-exact.
Requests are bounded by a concurrency limit and an optional rate limit (``asyncio-throttle``),
time out, and are retried with exponential backoff on connection errors, timeouts and 5xx/429
answers; other 4xx answers are the caller's fault and fail at once with the server's message.

Logprobs: vLLM returns what its ``--logprobs-mode`` says (default ``raw_logprobs``: before
temperature). The learner recomputes softmax(logits / temperature); launch vLLM with
``--logprobs-mode processed_logprobs`` when sampling at a temperature other than 1 (both agree
exactly at temperature 1 without top-k / top-p, the RL default). ``eigen_jax.serve`` returns the
learner's quantity.

Weight sync (``sync_weights``): pause the server until in-flight requests finish, reload the
weights from a safetensors directory in place, drop the prefix cache, resume. On vLLM this is
``/pause?mode=wait`` + ``/collective_rpc`` ``reload_weights`` + ``/reset_prefix_cache`` +
``/resume``, available when the server runs with ``VLLM_SERVER_DEV_MODE=1``; ``eigen_jax.serve``
answers the same endpoints. Waiting for in-flight requests means every completion comes from one
set of weights, so its version is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from asyncio_throttle import Throttler

from rollout.engine import ContextOverflow, Generation, SamplingParams


class EngineError(RuntimeError):
    """A request that failed for good (after retries, or a 4xx the server explained)."""


_RETRY_STATUS = {429, 500, 502, 503, 504}


class HTTPEngine:
    """Client for one OpenAI-compatible server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000`` (``/v1`` is appended for the OpenAI routes).
        model: the served model name (``--served-model-name`` on vLLM; any name for our server).
        timeout_s: seconds per request before it is retried.
        max_retries: retries after the first attempt.
        backoff_s: first retry delay; doubles per retry (up to ``max_backoff_s``), with jitter.
        concurrency: most requests in flight to this server.
        rate_per_s: most requests started per second (None: unlimited).
        api_key: sent as a bearer token when set.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        concurrency: int = 64,
        rate_per_s: float | None = None,
        api_key: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._sem = asyncio.Semaphore(concurrency)
        self._throttle = Throttler(rate_limit=max(1, round(rate_per_s)), period=1.0) if rate_per_s else None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None
        self._version = 0
        self.retries = 0
        """Requests retried so far (a health signal for progress lines)."""

    @property
    def version(self) -> int:
        return self._version

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HTTPEngine:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _client(self) -> aiohttp.ClientSession:
        # Sessions belong to the running loop; create lazily so the engine can be built anywhere.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def request(self, method: str, path: str, body: dict | None = None, **params: Any) -> Any:
        """One JSON request with limits, timeout and retries; returns the decoded JSON (or None)."""
        url = self.base_url + path
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            try:
                async with self._sem, contextlib.AsyncExitStack() as stack:
                    if self._throttle is not None:
                        await stack.enter_async_context(self._throttle)
                    timeout = aiohttp.ClientTimeout(total=self.timeout_s)
                    async with self._client().request(
                        method, url, json=body, params=params or None, timeout=timeout
                    ) as resp:
                        text = await resp.text()
                        if resp.status < 400:
                            return await resp.json(content_type=None) if text.strip() else None
                        if resp.status not in _RETRY_STATUS:
                            raise EngineError(f"{method} {url}: HTTP {resp.status}: {text[:500]}")
                        reason = f"HTTP {resp.status}: {text[:200]}"
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
                reason = f"{type(e).__name__}: {e}"
            if attempt == self.max_retries:
                raise EngineError(f"{method} {url}: failed after {attempt + 1} attempts ({reason})")
            self.retries += 1
            await asyncio.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    async def generate(self, prompt_tokens: list[int], sampling: SamplingParams) -> Generation:
        version = self._version  # sync_weights drains in-flight requests before bumping it
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": list(prompt_tokens),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else -1,
            "logprobs": 0,  # the sampled token's logprob only
            "return_token_ids": True,
            "stop_token_ids": list(sampling.stop_token_ids),
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        try:
            out = await self.request("POST", "/v1/completions", body)
        except EngineError as e:
            if "context length" in str(e).lower():  # vLLM's and eigen_jax.serve's wording
                raise ContextOverflow(str(e)) from None
            raise
        return parse_completion(out, version)

    async def sync_weights(
        self, weights_dir: str, version: int, before_resume: Callable[[], Awaitable[Any]] | None = None
    ) -> None:
        """Make the server serve the HF safetensors in ``weights_dir`` as ``version``.
        ``before_resume`` runs while the server is paused with the new weights loaded (e.g. to
        announce the version to rollout servers that label tokens)."""
        await self.request("POST", "/pause", mode="wait")
        try:
            await self.request(
                "POST",
                "/collective_rpc",
                {"method": "reload_weights", "kwargs": {"weights_path": weights_dir}},
            )
            await self.request("POST", "/reset_prefix_cache")
            self._version = version
            if before_resume is not None:
                await before_resume()
        finally:
            await self.request("POST", "/resume")


def parse_completion(out: Any, version: int) -> Generation:
    """A ``/v1/completions`` answer (one choice, ``return_token_ids``, ``logprobs=0``) -> Generation."""
    try:
        choice = out["choices"][0]
        tokens = [int(t) for t in choice["token_ids"]]
        lps = choice["logprobs"]["token_logprobs"]
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError) as e:
        raise EngineError(
            f"unexpected completion answer ({type(e).__name__}: {e}); the server must support "
            f"return_token_ids and logprobs: {str(out)[:300]}"
        ) from None
    if len(lps) != len(tokens):
        raise EngineError(f"{len(tokens)} token ids but {len(lps)} logprobs in the answer")
    return Generation(
        tokens=tokens,
        logprobs=[float("-inf") if lp is None else float(lp) for lp in lps],
        finish_reason="length" if finish == "length" else "stop",
        version=version,
    )
