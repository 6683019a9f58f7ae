"""``eigen_jax.serve``'s request contract: what it does not implement is refused by name; ``n``
and ``stream`` work with real clients (openai, litellm); API keys; and the same network rule for
``eigen_apps.rollout_server``."""

import json
import os
import subprocess
import sys

import aiohttp
import pytest
from http_helpers import run_with

from eigen_core.tokenizer import build_small_tokenizer
from eigen_jax.serve import Server
from eigen_jax.serve_protocol import MAX_N, check_fields, sse_events
from rollout.engine import Generation
from rollout.http_auth import is_loopback, server_token
from rollout.http_engine import EngineError, HTTPEngine

TEXT = "hello there, how can I help with your order today"


class _SeededSampler:
    """Stands in for the sampler: the completion is a function of the seed (a different one per
    unseeded request), so ``n`` and streaming can be checked exactly."""

    max_len, version, prefix_cache = 4096, 0, None

    def __init__(self, tok):
        self.tok, self.calls = tok, 0
        self.words = TEXT.split()

    async def generate(self, prompt, sp):
        self.calls += 1
        seed = sp.seed if sp.seed is not None else 1000 + self.calls
        text = " ".join(self.words[(seed + k) % len(self.words)] for k in range(3))
        ids = self.tok.encode(text)[: sp.max_new_tokens]
        return Generation(tokens=ids, logprobs=[-0.5] * len(ids), finish_reason="length", version=0)


@pytest.fixture(scope="module")
def tok():
    return build_small_tokenizer([TEXT], 300)


def _serve(tok, fn, api_key=None):
    return run_with(Server(_SeededSampler(tok), tok, "m").app(api_key), fn)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
COMPLETION = {"model": "m", "prompt": [5, 6, 7], "max_tokens": 8}


@pytest.mark.parametrize(
    "route,extra,named",
    [
        ("chat", {"stop": ["\n"]}, "stop"),
        ("chat", {"presence_penalty": 0.5}, "presence_penalty"),
        ("chat", {"tool_choice": "required"}, "tool_choice"),
        ("chat", {"tool_choice": {"type": "function", "function": {"name": "x"}}}, "tool_choice"),
        ("chat", {"top_logprobs": 3}, "top_logprobs"),
        ("chat", {"logit_bias": {"5": 10}}, "logit_bias"),
        ("chat", {"frobnicate": 1}, "frobnicate"),
        ("chat", {"n": MAX_N + 1}, "n must be"),
        ("chat", {"n": 0}, "n must be"),
        ("chat", {"stream_options": {"include_usage": True}}, "stream_options"),
        ("completions", {"logprobs": 5}, "logprobs"),
        ("completions", {"echo": True}, "echo"),
        ("completions", {"best_of": 3}, "best_of"),
        ("completions", {"suffix": "x"}, "suffix"),
        ("completions", {"max_tokens": 0}, "max_tokens"),
        ("completions", {"include_stop_str_in_output": False}, "include_stop_str_in_output"),
    ],
)
def test_unimplemented_fields_are_refused_by_name(tok, route, extra, named):
    body = {**(CHAT if route == "chat" else COMPLETION), **extra}
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"

    async def go(url):
        async with HTTPEngine(url, "m", max_retries=0) as eng:
            with pytest.raises(EngineError, match="HTTP 400") as e:
                await eng.request("POST", path, body)
            return str(e.value)

    assert named in _serve(tok, go)


def test_no_op_values_of_unimplemented_fields_are_accepted():
    for body in (
        {**CHAT, "stop": None, "presence_penalty": 0, "tool_choice": "auto", "user": "u", "top_logprobs": 0},
        {**CHAT, "parallel_tool_calls": True, "logit_bias": {}, "stream": False, "n": 1},
    ):
        check_fields(body, "chat")
    check_fields(
        {**COMPLETION, "echo": False, "best_of": 1, "include_stop_str_in_output": True}, "completions"
    )


def test_n_gives_n_choices_one_seed_each(tok):
    async def go(url):
        async with HTTPEngine(url, "m") as eng:
            many = await eng.request("POST", "/v1/chat/completions", {**CHAT, "n": 3, "seed": 7})
            ones = [await eng.request("POST", "/v1/chat/completions", {**CHAT, "seed": s}) for s in (7, 8, 9)]
            comp = await eng.request(
                "POST", "/v1/completions", {**COMPLETION, "n": 2, "return_token_ids": True}
            )
            return many, ones, comp

    many, ones, comp = _serve(tok, go)
    assert [c["index"] for c in many["choices"]] == [0, 1, 2]
    assert [c["message"] for c in many["choices"]] == [o["choices"][0]["message"] for o in ones]
    assert many["usage"]["completion_tokens"] == sum(o["usage"]["completion_tokens"] for o in ones)
    assert len(comp["choices"]) == 2 and comp["choices"][0]["token_ids"] != comp["choices"][1]["token_ids"]


def test_streaming_with_the_openai_client(tok):
    openai = pytest.importorskip("openai")

    async def go(url):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        plain = await client.chat.completions.create(
            model="m", messages=CHAT["messages"], max_tokens=8, seed=3
        )
        stream = await client.chat.completions.create(
            model="m",
            messages=CHAT["messages"],
            max_tokens=8,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        text_stream = await client.completions.create(
            model="m", prompt=[5, 6], max_tokens=8, seed=3, stream=True
        )
        texts = [c async for c in text_stream]
        plain_text = await client.completions.create(model="m", prompt=[5, 6], max_tokens=8, seed=3)
        await client.close()
        return plain, chunks, texts, plain_text

    plain, chunks, texts, plain_text = _serve(tok, go)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content and content == plain.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens and not chunks[-1].choices
    assert "".join(c.choices[0].text for c in texts) == plain_text.choices[0].text


def test_streaming_with_litellm_tau2s_client(tok, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")

    async def go(url):
        kw = dict(
            model="openai/m", api_base=url + "/v1", api_key="k", messages=CHAT["messages"], max_tokens=8
        )
        plain = await litellm.acompletion(**kw, seed=5)
        stream = await litellm.acompletion(**kw, seed=5, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        two = await litellm.acompletion(**kw, n=2, seed=5)
        return plain, parts, two

    plain, parts, two = _serve(tok, go)
    assert "".join(parts) == plain.choices[0].message.content
    assert len(two.choices) == 2


def test_sse_events_end_with_done_and_carry_tool_calls():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    answer = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    events = list(sse_events(answer, include_usage=False))
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant" and deltas[1]["tool_calls"][0]["function"]["name"] == "f"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_api_key_is_required_when_set(tok):
    async def go(url):
        async with aiohttp.ClientSession() as s:
            statuses = {}
            for name, headers in {"none": {}, "wrong": {"Authorization": "Bearer nope"}}.items():
                async with s.post(url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
                    statuses[name] = r.status
            async with s.get(url + "/health") as r:
                statuses["health"] = r.status
        async with HTTPEngine(url, "m", api_key="sekret") as eng:
            ok = await eng.request("POST", "/v1/chat/completions", CHAT)
        async with HTTPEngine(url, "m", max_retries=3, backoff_s=0.01) as eng:
            with pytest.raises(EngineError, match="HTTP 401"):  # refused at once, not retried
                await eng.request("GET", "/v1/models")
            return statuses, ok, eng.retries

    statuses, ok, retries = _serve(tok, go, api_key="sekret")
    assert statuses == {"none": 401, "wrong": 401, "health": 200}
    assert ok["choices"] and retries == 0


def test_network_exposure_needs_a_token(monkeypatch):
    monkeypatch.delenv("EIGEN_API_KEY", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert server_token("127.0.0.1", None, "--api-key") is None
    with pytest.raises(ValueError, match="--api-key"):
        server_token("0.0.0.0", None, "--api-key")
    assert server_token("0.0.0.0", "t", "--api-key") == "t"
    monkeypatch.setenv("EIGEN_API_KEY", "from-env")
    assert server_token("0.0.0.0", None, "--api-key") == "from-env"


@pytest.mark.parametrize(
    "argv,named",
    [
        (["eigen_jax.serve", "--model", "/nonexistent", "--host", "0.0.0.0"], "--api-key"),
        (["eigen_apps.rollout_server", "server.host=0.0.0.0"], "server.api_key_env"),
    ],
)
def test_servers_refuse_to_listen_beyond_loopback_without_a_token(argv, named):
    env = {k: v for k, v in os.environ.items() if k != "EIGEN_API_KEY"}
    run = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode != 0 and "refusing to listen on 0.0.0.0" in run.stderr and named in run.stderr
