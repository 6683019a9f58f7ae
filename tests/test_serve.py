"""The HTTP engine client against ``eigen_jax.serve`` (in-process and as a launched server), and
its retry / timeout / throttle behaviour against misbehaving servers."""

import asyncio
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aiohttp import web
from flax import nnx
from http_helpers import run_with

from eigen_core.chat_format import ChatFormat
from eigen_core.contracts import Message
from eigen_core.tokenizer import build_small_tokenizer
from eigen_jax.model import Decoder, DecoderConfig, positions_from_mask
from eigen_jax.model.hf import load_hf, save_hf
from eigen_jax.ops import next_token_logprobs
from eigen_jax.sampler import Sampler
from eigen_jax.serve import Server
from eigen_jax.train_config import TINY_ARCH
from rollout.engine import Generation, SamplingParams
from rollout.http_engine import EngineError, HTTPEngine
from rollout.vllm_server import free_port

PROMPT = [5, 9, 17, 33, 2, 8]


@pytest.fixture(scope="module")
def served(tmp_path_factory, shop):
    root = tmp_path_factory.mktemp("served")
    fmt = ChatFormat()
    tok = build_small_tokenizer(
        [fmt.render([Message(role="system", content=shop.policy)], shop.tool_schemas())], 400
    )
    model = Decoder(DecoderConfig.from_hf({**TINY_ARCH, "vocab_size": 448}), rngs=nnx.Rngs(0))
    tok.save(root / "tok")
    save_hf(model, root / "v0", tokenizer_dir=root / "tok")
    return model, tok, root


def _recompute(model, prompt, gen):
    seq = jnp.asarray([prompt + gen])
    mask = jnp.ones_like(seq)
    logits, _ = model(seq, positions_from_mask(mask), mask)
    return np.asarray(next_token_logprobs(logits, seq))[0, len(prompt) - 1 :]


def test_completions_match_the_in_process_sampler(served):
    model, tok, _ = served
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    want = Sampler(model).generate_batch([PROMPT], sp)[0]

    async def go(url):
        async with HTTPEngine(url, "m") as eng:
            greedy = await eng.generate(PROMPT, sp)
            sampled = await eng.generate(PROMPT, SamplingParams(max_new_tokens=12, seed=4))
            return greedy, sampled

    greedy, sampled = run_with(Server(Sampler(model), tok, "m").app(), go)
    assert greedy.tokens == want.tokens and greedy.finish_reason == "length" and greedy.version == 0
    np.testing.assert_allclose(greedy.logprobs, want.logprobs, atol=1e-6)
    np.testing.assert_allclose(sampled.logprobs, _recompute(model, PROMPT, sampled.tokens), atol=1e-4)


def test_bad_requests_fail_at_once_with_the_servers_reason(served):
    model, tok, _ = served

    async def go(url):
        async with HTTPEngine(url, "m", max_retries=3, backoff_s=0.01) as eng:
            with pytest.raises(EngineError, match=r"HTTP 400.*prompt must be"):
                await eng.request("POST", "/v1/completions", {"prompt": {"x": 1}})
            with pytest.raises(EngineError, match=r"HTTP 400.*messages\[0\]"):
                await eng.request("POST", "/v1/chat/completions", {"messages": [{"role": "robot"}]})
            with pytest.raises(Exception, match="maximum context length"):
                await eng.generate(list(range(1, 50)), SamplingParams(max_new_tokens=4000))
            # Constrained decoding is refused, not ignored (callers would trust the text to parse).
            fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "response_format": fmt}
            with pytest.raises(EngineError, match=r"HTTP 400.*response_format.*not supported"):
                await eng.request("POST", "/v1/chat/completions", chat)
            plain = await eng.request(
                "POST", "/v1/chat/completions", {**chat, "response_format": {"type": "text"}}
            )
            assert plain["choices"][0]["finish_reason"] in ("length", "stop")
            return eng.retries

    sampler = Sampler(model, max_len=256)
    assert run_with(Server(sampler, tok, "m").app(), go) == 0


class _ToolCallSampler:
    """Stands in for the sampler: always 'generates' one tool call."""

    max_len, version = 4096, 0

    def __init__(self, tok):
        self.tok = tok
        self.prompts = []

    async def generate(self, prompt, sp):
        self.prompts.append(prompt)
        text = '<tool_call>\n{"name": "get_order", "arguments": {"order_id": "O7"}}\n</tool_call>'
        ids = [*self.tok.encode(text), self.tok.eos_id]
        return Generation(tokens=ids, logprobs=[0.0] * len(ids), finish_reason="stop", version=0)


def test_chat_completions_render_and_parse_tool_calls(served, shop):
    _, tok, _ = served
    fake = _ToolCallSampler(tok)
    messages = [
        {"role": "system", "content": "policy"},
        {"role": "user", "content": "where is my order O7?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_customer", "arguments": '{"customer_id": "C1"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"name": "Ann"}'},
    ]

    async def go(url):
        async with HTTPEngine(url, "m") as eng:
            return await eng.request(
                "POST",
                "/v1/chat/completions",
                {"messages": messages, "tools": shop.tool_schemas(), "max_tokens": 64},
            )

    out = run_with(Server(fake, tok, "m").app(), go)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_order" and json.loads(call["arguments"]) == {"order_id": "O7"}
    fmt = ChatFormat()
    from rollout.openai_format import from_openai

    want = fmt.render([from_openai(m) for m in messages], shop.tool_schemas(), add_generation_prompt=True)
    assert tok.decode(fake.prompts[0]) == want
    assert out["usage"]["prompt_tokens"] == len(tok.encode(want))


def test_retries_with_backoff_then_success():
    hits = []

    async def flaky(request):
        hits.append(time.perf_counter())
        if len(hits) <= 2:
            return web.Response(status=503, text="warming up")
        return web.json_response(
            {
                "choices": [
                    {
                        "token_ids": [1, 2],
                        "logprobs": {"token_logprobs": [-0.5, -0.25]},
                        "finish_reason": "stop",
                    }
                ]
            }
        )

    app = web.Application()
    app.router.add_post("/v1/completions", flaky)

    async def go(url):
        async with HTTPEngine(url, "m", backoff_s=0.05) as eng:
            return await eng.generate([3], SamplingParams()), eng.retries

    gen, retries = run_with(app, go)
    assert gen.tokens == [1, 2] and gen.logprobs == [-0.5, -0.25] and retries == 2
    # Exponential backoff: the retry delays are at least 0.05 s then 0.1 s (a sleep never ends
    # early, so these lower bounds hold however loaded the machine is; 1 ms for clock resolution).
    assert hits[1] - hits[0] >= 0.05 - 1e-3 and hits[2] - hits[1] >= 0.1 - 1e-3


def test_timeouts_are_retried_then_reported():
    async def slow(request):
        await asyncio.sleep(2)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/completions", slow)

    async def go(url):
        async with HTTPEngine(url, "m", timeout_s=0.2, max_retries=1, backoff_s=0.01) as eng:
            with pytest.raises(EngineError, match="failed after 2 attempts \\(TimeoutError"):
                await eng.generate([3], SamplingParams())

    run_with(app, go)


def test_concurrency_limit_holds():
    live, peak = [0], [0]

    async def handler(request):
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        await asyncio.sleep(0.05)
        live[0] -= 1
        return web.json_response(
            {
                "choices": [
                    {"token_ids": [1], "logprobs": {"token_logprobs": [0.0]}, "finish_reason": "length"}
                ]
            }
        )

    app = web.Application()
    app.router.add_post("/v1/completions", handler)

    async def go(url):
        async with HTTPEngine(url, "m", concurrency=2) as eng:
            await asyncio.gather(*(eng.generate([1], SamplingParams()) for _ in range(8)))

    run_with(app, go)
    assert peak[0] == 2


def test_unreachable_server_is_an_engine_error():
    port = free_port()

    async def go():
        async with HTTPEngine(f"http://127.0.0.1:{port}", "m", max_retries=1, backoff_s=0.01) as eng:
            with pytest.raises(EngineError, match="failed after 2 attempts"):
                await eng.generate([1], SamplingParams())

    asyncio.run(go())


def test_weight_sync_serves_the_new_weights(served):
    model, tok, root = served
    new = jax.tree.map(lambda x: x * 1.5 if x.ndim == 2 else x, nnx.state(model))
    model2 = nnx.merge(nnx.graphdef(model), new)
    save_hf(model2, root / "v1")
    sp = SamplingParams(temperature=0, max_new_tokens=8)

    async def go(url):
        async with HTTPEngine(url, "m") as eng:
            before = await eng.generate(PROMPT, sp)
            await eng.sync_weights(str(root / "v1"), version=1)
            after = await eng.generate(PROMPT, sp)
            with pytest.raises(EngineError, match="not a directory"):
                await eng.sync_weights(str(root / "nope"), version=2)
            return before, after, eng.version

    before, after, version = run_with(Server(Sampler(load_hf(root / "v0")), tok, "m").app(), go)
    assert before.version == 0 and after.version == 1 and version == 1
    np.testing.assert_allclose(after.logprobs, _recompute(model2, PROMPT, after.tokens), atol=1e-4)
    np.testing.assert_allclose(before.logprobs, _recompute(model, PROMPT, before.tokens), atol=1e-4)


def test_launched_server_answers(served):
    _, _, root = served
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eigen_jax.serve", "--model", str(root / "v0"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        async def go():
            async with HTTPEngine(
                f"http://127.0.0.1:{port}", "v0", max_retries=120, backoff_s=0.25, max_backoff_s=0.5
            ) as eng:
                models = await eng.request("GET", "/v1/models")
                gen = await eng.generate(PROMPT, SamplingParams(max_new_tokens=4, temperature=0))
                return models, gen

        models, gen = asyncio.run(go())
        assert models["data"][0]["id"] == "v0" and len(gen.tokens) == 4
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "[serve]" in out


def test_serve_cli_rejects_a_non_model_dir(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "eigen_jax.serve", "--model", str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode != 0 and "no config.json" in run.stderr
