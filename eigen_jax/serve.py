"""``python -m eigen_jax.serve``: the embedded sampler behind the OpenAI-compatible HTTP subset that
eigen-jax's clients use, so a laptop runs the "separate inference servers" topology without vLLM.

    python -m eigen_jax.serve --model runs/quickstart/sft_agent/hf [--port 8000]
    python -m eigen_jax.serve --config serve.yaml [served.dir=... server.port=...]

Its config has two sections, ``server`` (where it listens) and ``served`` (the checkpoint); each
flag is an alias of one of their keys (``FLAGS``).

Routes (as vLLM's): ``POST /v1/completions`` (token-id or text prompt; ``return_token_ids``;
``logprobs``; an MoE's ``routed_experts`` with ``served.routed_experts``), ``POST
/v1/chat/completions`` (messages + tools, Qwen/Hermes tool calls parsed into ``tool_calls``), ``GET
/v1/models``, ``GET /health``; and for weight sync ``POST /pause`` (waits for in-flight requests;
new ones wait), ``/collective_rpc`` with method ``reload_weights`` and ``kwargs.weights_path`` (an
HF safetensors directory), ``/reset_prefix_cache``
(drops the prefix cache) and ``/resume``. Logprobs are those of softmax(logits / temperature),
what the learner recomputes. ``n`` and ``stream`` are implemented; any other request field we do
not implement is refused by name (``serve_protocol``). Bound beyond loopback it needs an API key
(``--api-key``, ``server.api_key_env`` or ``$EIGEN_API_KEY``), which every route but ``/health``
then requires.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp
from aiohttp import web
from pydantic import Field

from eigen_core.chat_format import ChatFormat
from eigen_core.config import ServerSection, env_secret
from eigen_core.configio import Section, add_config_args, add_flag_aliases, alias_overrides, config_from_args
from eigen_core.routes import RouteLayout, routes_to_vllm
from eigen_core.tokenizer import Tokenizer
from eigen_jax.model.hf import load_hf
from eigen_jax.sampler import ContextOverflow, Sampler
from eigen_jax.serve_protocol import BadRequest, check_fields, sse_events
from rollout import http_limits
from rollout.engine import SamplingParams
from rollout.http_auth import API_KEY_ENV, server_token
from rollout.openai_format import from_openai, to_openai

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Server:
    """Request handling around one ``Sampler`` (see the module docstring for the routes)."""

    def __init__(
        self,
        sampler: Sampler,
        tokenizer: Tokenizer,
        name: str,
        *,
        dtype=jnp.float32,
        fmt=None,
        routed_experts: bool = False,
    ):
        """``routed_experts``: answer completions with vLLM's ``routed_experts`` (the sampler
        must record routes: ``Sampler(record_routes=True)``)."""
        if routed_experts and getattr(sampler, "route_width", None) is None:
            raise ValueError("routed_experts: the sampler records no routes (Sampler(record_routes=True))")
        self.routes = RouteLayout.of(sampler.cfg) if routed_experts else None
        self.sampler, self.tok, self.name, self.dtype = sampler, tokenizer, name, dtype
        self.fmt = fmt or ChatFormat()
        self._open = asyncio.Event()
        self._open.set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.served = 0
        self.generated = 0

    # -- helpers -----------------------------------------------------------------------------
    def _sampling(self, body: dict[str, Any], stop_ids: list[int]) -> SamplingParams:
        fmt = body.get("response_format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type", "text") != "text"):
            # Silently ignoring it would hand back unconstrained text the caller trusts to parse.
            raise BadRequest(
                "response_format: constrained decoding (json_object / json_schema) is not supported "
                "by eigen_jax.serve; serve the model with vLLM, or ask without it"
            )
        try:
            top_k = int(body.get("top_k") or 0)
            asked = [body.get(k) for k in ("max_tokens", "max_completion_tokens")]
            max_tokens = int(next((v for v in asked if v is not None), 256))
            if max_tokens < 1:
                raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
            return SamplingParams(
                temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)),
                top_k=max(top_k, 0),
                max_new_tokens=max_tokens,
                stop_token_ids=[int(t) for t in body.get("stop_token_ids") or []] + stop_ids,
                seed=body.get("seed"),
            )
        except (ValueError, TypeError) as e:
            raise BadRequest(f"invalid sampling parameters: {e}") from None

    async def _generate(self, prompt: list[int], sp: SamplingParams):
        await self._open.wait()  # paused for a weight swap: wait for /resume
        self._in_flight += 1
        self._idle.clear()
        try:
            gen = await self.sampler.generate(prompt, sp)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        self.served += 1
        self.generated += len(gen.tokens)
        return gen

    async def _generate_n(self, prompt: list[int], sp: SamplingParams, n: int) -> list:
        """``n`` samples of one prompt, concurrently; with a seed, sample ``i`` uses seed + i."""
        seeds = [None if sp.seed is None else int(sp.seed) + i for i in range(n)]
        sps = [sp if i == 0 else sp.model_copy(update={"seed": seeds[i]}) for i in range(n)]
        return list(await asyncio.gather(*(self._generate(prompt, p) for p in sps)))

    def _answer(
        self, kind: str, ids: list[int], gens: list, choices: list[dict[str, Any]], model: Any = None
    ) -> dict[str, Any]:
        """The OpenAI response envelope (``kind``: text_completion | chat.completion). It names
        the model the request asked for (this server answers to any name), else its own."""
        prefix = "cmpl" if kind == "text_completion" else "chatcmpl"
        completion = sum(len(g.tokens) for g in gens)
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": model if isinstance(model, str) and model else self.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": completion,
                "total_tokens": len(ids) + completion,
            },
        }

    def _routes(self, gen, prompt_len: int, start: int) -> str:
        """vLLM's ``routed_experts`` of one completion (``served.routed_experts``)."""
        layers, tokens = self.sampler.cfg.num_hidden_layers, prompt_len + len(gen.tokens)
        return routes_to_vllm(gen.routes, self.routes, layers, tokens, start)

    # -- routes ------------------------------------------------------------------------------
    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        check_fields(body, "completions")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list | str):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            ids = self.tok.encode(prompt)
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            ids = prompt
        else:
            raise BadRequest("prompt must be a string or a list of token ids (one prompt per request)")
        if not ids:
            raise BadRequest("prompt is empty")
        logprobs = body.get("logprobs")
        if logprobs not in (None, 0) or isinstance(logprobs, bool):
            raise BadRequest("logprobs: only 0 (the sampled token's logprob) is supported, not top-k")
        sp = self._sampling(body, [])
        start = body.get("routed_experts_prompt_start") or 0
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= len(ids):
            raise BadRequest(
                f"routed_experts_prompt_start must be an integer in 0 .. {len(ids)}, not {start!r}"
            )
        gens = await self._generate_n(ids, sp, int(body.get("n") or 1))
        skip = bool(body.get("skip_special_tokens", False))
        choices = []
        for i, gen in enumerate(gens):
            choice: dict[str, Any] = {
                "index": i,
                "text": self.tok.decode(gen.tokens, skip_special_tokens=skip),
                "finish_reason": gen.finish_reason,
            }
            if body.get("return_token_ids"):
                choice["token_ids"] = gen.tokens
                choice["prompt_token_ids"] = ids
            if logprobs is not None:
                choice["logprobs"] = {
                    "tokens": [self.tok.decode([t]) for t in gen.tokens],
                    "token_logprobs": gen.logprobs,
                }
            if self.routes is not None:
                choice["routed_experts"] = self._routes(gen, len(ids), start)
            choices.append(choice)
        return self._answer("text_completion", ids, gens, choices, body.get("model"))

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        check_fields(body, "chat")
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise BadRequest("messages must be a non-empty list")
        try:
            messages = [from_openai(m, f"messages[{i}]") for i, m in enumerate(raw)]
        except ValueError as e:
            raise BadRequest(str(e)) from None
        tools = body.get("tools") or None
        if tools is not None and not (isinstance(tools, list) and all(map(_is_tool_schema, tools))):
            raise BadRequest(
                "tools must be a list of {'type': 'function', 'function': {'name': ...}} objects"
            )
        text = self.fmt.render(messages, tools, add_generation_prompt=True)
        ids = self.tok.encode(text)
        sp = self._sampling(body, [self.tok.eos_id])
        gens = await self._generate_n(ids, sp, int(body.get("n") or 1))
        skip = bool(body.get("skip_special_tokens", False))
        choices = []
        for i, gen in enumerate(gens):
            msg = self.fmt.parse_assistant(self.tok.decode(gen.tokens, skip_special_tokens=skip))
            finish = "tool_calls" if msg.tool_calls and gen.finish_reason == "stop" else gen.finish_reason
            choice: dict[str, Any] = {"index": i, "message": to_openai(msg), "finish_reason": finish}
            if body.get("logprobs"):
                choice["logprobs"] = {
                    "content": [
                        {"token": self.tok.decode([t]), "logprob": lp, "top_logprobs": []}
                        for t, lp in zip(gen.tokens, gen.logprobs, strict=True)
                    ]
                }
            choices.append(choice)
        return self._answer("chat.completion", ids, gens, choices, body.get("model"))

    async def pause(self) -> dict[str, Any]:
        self._open.clear()
        await self._idle.wait()
        return {"status": "paused"}

    async def resume(self) -> dict[str, Any]:
        self._open.set()
        return {"status": "resumed"}

    async def collective_rpc(self, body: dict[str, Any]) -> dict[str, Any]:
        method, kwargs = body.get("method"), body.get("kwargs") or {}
        if method != "reload_weights":
            raise BadRequest(f"collective_rpc: only 'reload_weights' is supported, not {method!r}")
        path = kwargs.get("weights_path")
        if not path or not Path(path).is_dir():
            raise BadRequest(f"reload_weights: weights_path {path!r} is not a directory")
        model = await asyncio.to_thread(load_hf, path, dtype=self.dtype, param_dtype=self.dtype)
        try:
            version = self.sampler.update_weights(model)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        return {"results": [{"version": version}]}

    # -- aiohttp glue ------------------------------------------------------------------------
    def app(self, api_key: str | None = None, server: ServerSection | None = None) -> web.Application:
        """The aiohttp application; with ``api_key``, every route but /health needs it;
        ``server``: where its request deadlines come from (``http_limits``)."""

        def route(fn, with_body=True):
            async def handler(request: web.Request) -> web.Response:
                try:
                    if with_body:
                        try:
                            body = await request.json() if request.body_exists else {}
                        except ValueError as e:  # invalid JSON or not UTF-8
                            raise BadRequest(f"body is not JSON: {e}") from None
                        if not isinstance(body, dict):
                            raise BadRequest("body must be a JSON object")
                        answer = await fn(body)
                        if body.get("stream"):
                            return await self._stream(request, answer, body)
                        return web.json_response(answer)
                    return web.json_response(await fn())
                except BadRequest as e:
                    return web.json_response(
                        {"error": {"message": str(e), "type": "BadRequestError"}}, status=400
                    )
                except ContextOverflow as e:
                    msg = f"This model's maximum context length is {self.sampler.max_len} tokens: {e}"
                    return web.json_response(
                        {"error": {"message": msg, "type": "BadRequestError"}}, status=400
                    )

            return handler

        limits = server or ServerSection()
        app = web.Application(
            client_max_size=64 * 2**20, middlewares=http_limits.middlewares(api_key, limits)
        )
        app.router.add_post("/v1/completions", route(self.completions))
        app.router.add_post("/v1/chat/completions", route(self.chat))
        app.router.add_post("/pause", route(self.pause, with_body=False))
        app.router.add_post("/resume", route(self.resume, with_body=False))
        app.router.add_post("/collective_rpc", route(self.collective_rpc))
        app.router.add_post("/reset_prefix_cache", route(self._reset_prefix_cache, with_body=False))
        app.router.add_get("/health", route(self._ok, with_body=False))
        app.router.add_get("/v1/models", route(self._models, with_body=False))
        return app

    async def _stream(self, request: web.Request, answer: dict[str, Any], body: dict[str, Any]):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for event in sse_events(answer, bool((body.get("stream_options") or {}).get("include_usage"))):
            await resp.write(event)
        await resp.write_eof()
        return resp

    async def _ok(self) -> dict[str, Any]:
        return {}

    async def _reset_prefix_cache(self) -> dict[str, Any]:
        if self.sampler.prefix_cache is not None:
            self.sampler.prefix_cache.clear()
        return {}

    async def _models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "eigen-jax"}]}


def _is_tool_schema(t: Any) -> bool:
    fn = t.get("function") if isinstance(t, dict) else None
    return isinstance(fn, dict) and isinstance(fn.get("name"), str)


async def _progress(server: Server, every_s: float) -> None:
    last = (0, 0, time.perf_counter())
    while True:
        await asyncio.sleep(every_s)
        served, generated, now = server.served, server.generated, time.perf_counter()
        if served != last[0]:
            rate = (generated - last[1]) / (now - last[2])
            store = server.sampler.prefix_cache
            cached = f", prefix cache hit {store.hit_rate:.0%} of prompt tokens" if store is not None else ""
            print(
                f"[serve] {served} requests, {generated} tokens generated ({rate:.0f} tok/s), "
                f"weights v{server.sampler.version}{cached}",
                flush=True,
            )
        last = (served, generated, now)


class ServedModelSection(Section):
    """The checkpoint ``eigen_jax.serve`` serves and how."""

    dir: str = ""
    """HF directory (config.json + safetensors); required."""
    tokenizer: str = ""
    """Directory with tokenizer.json; empty: ``dir``."""
    name: str = ""
    """The served model name clients ask for; empty: the directory's name."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter and compute dtype."""
    max_len: int | None = Field(None, ge=16)
    """Longest prompt + completion served; None: the model's."""
    prefix_cache_mb: float = Field(1024.0, ge=0)
    """Host memory for the KV of served sequences (multi-turn prompts prefill only their new
    tokens); 0: off."""
    empty_think: bool = False
    """Qwen3 chat turns open with an empty <think> block."""
    routed_experts: bool = False
    """MoE models: each completion choice carries ``routed_experts``, the experts of every token
    of the request but the last, in vLLM's format (``--enable-return-routed-experts``): what
    routing replay through rollout servers reads (prefix-cache entries keep their tokens' routes;
    a token without any is marked by the id dtype's largest value)."""


class ServeConfig(Section):
    """What ``python -m eigen_jax.serve`` reads."""

    server: ServerSection = ServerSection(port=8000)
    """Where it listens."""
    served: ServedModelSection = ServedModelSection()
    """What it serves."""


FLAGS = {
    "--model": ("served.dir", str),
    "--tokenizer": ("served.tokenizer", str),
    "--served-model-name": ("served.name", str),
    "--dtype": ("served.dtype", str),
    "--max-len": ("served.max_len", int),
    "--prefix-cache-mb": ("served.prefix_cache_mb", float),
    "--empty-think": ("served.empty_think", bool),
    "--enable-return-routed-experts": ("served.routed_experts", bool),
    "--host": ("server.host", str),
    "--port": ("server.port", int),
    "--progress-every": ("server.progress_every", float),
}
"""Flags kept from before the config (each is an alias of its key)."""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m eigen_jax.serve", description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    add_flag_aliases(ap, FLAGS)
    ap.add_argument(
        "--api-key",
        default=None,
        help=f"bearer token every request but /health must send (default: server.api_key_env, else "
        f"${API_KEY_ENV}); required when the host is not a loopback address",
    )
    args = ap.parse_args(argv)
    cfg = config_from_args(ServeConfig, args, alias_overrides(args, FLAGS), foreign_sections=())
    sv, m = cfg.server, cfg.served
    if not m.dir:
        sys.exit("eigen_jax.serve: served.dir (--model): the HF directory to serve is required")
    model_dir = Path(m.dir)
    try:
        given = args.api_key or env_secret(sv.api_key_env, "server.api_key_env")
        api_key = server_token(sv.host, given, "--api-key / server.api_key_env")
    except ValueError as e:
        sys.exit(f"eigen_jax.serve: {e}")
    if not (model_dir / "config.json").exists():
        sys.exit(f"served.dir {model_dir}: no config.json (expected an HF model directory)")
    tok = Tokenizer.from_dir(m.tokenizer or model_dir)
    dtype = DTYPES[m.dtype]
    sampler = Sampler(
        load_hf(model_dir, dtype=dtype, param_dtype=dtype),
        pad_id=tok.pad_id,
        max_len=m.max_len,
        prefix_cache_mb=m.prefix_cache_mb,
        record_routes=m.routed_experts,
    )
    server = Server(
        sampler,
        tok,
        m.name or model_dir.name,
        dtype=dtype,
        fmt=ChatFormat(empty_think=m.empty_think),
        routed_experts=m.routed_experts,
    )

    async def start(app: web.Application) -> None:
        app["progress"] = asyncio.create_task(_progress(server, sv.progress_every))

    app = server.app(api_key, sv)
    app.on_startup.append(start)
    auth = ", API key required" if api_key else ""
    print(f"[serve] {model_dir} on http://{sv.host}:{sv.port} as {server.name!r}{auth}", flush=True)
    http_limits.run(app, sv)


if __name__ == "__main__":
    main()
