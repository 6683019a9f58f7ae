"""Property-based fuzzing of everything that reads outside input: model output parsers, the
OpenAI message reader, tau² tool environments, the config loader, and both HTTP servers. Each
target either succeeds or fails the documented way (a flagged message, an error observation, a
``ConfigError`` naming the place, a 4xx) — never an exception of another kind, never a 5xx."""

import asyncio
import contextlib
import copy
import json
import string

import pytest
import yaml
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from eigen_apps.rollout_server import RolloutServer, RolloutServerConfig
from eigen_core.chat_format import ChatFormat
from eigen_core.config import ServerSection
from eigen_core.configio import ConfigError, load_config
from eigen_core.contracts import Message, ToolCall
from eigen_core.tokenizer import build_small_tokenizer
from eigen_jax.serve import Server
from rollout.engine import Generation
from rollout.http_limits import runner_options
from rollout.openai_format import from_openai
from verifiers.sandbox import Sandbox

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_FRAGMENTS = [
    "<tool_call>", "</tool_call>", "<think>", "</think>", "<|im_end|>", "<|im_start|>", "\n", "{", "}",
    '{"name": "get_order", "arguments": {"order_id": "O1"}}', '{"name": 3}', '{"name": "x", "arguments": 5}',
    '{"name": "x", "arguments": "{\\"a\\": 1}"}', "null", "[1, 2]", '"name"', "\\u0000", "\ud7ff",
]  # fmt: skip
model_text = st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=15), max_size=14).map("".join)


@fuzz(200)
@given(text=model_text)
def test_chat_format_parser_never_raises_and_flags_what_it_cannot_parse(text):
    m = ChatFormat().parse_assistant(text)
    assert m.role == "assistant"
    if m.malformed:
        assert m.content == text and not m.tool_calls  # nothing of a broken turn is half-used
    for call in m.tool_calls or []:
        assert isinstance(call.name, str) and isinstance(call.arguments, dict | str)


names = st.text(string.ascii_letters + "_", min_size=1, max_size=12)
args = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
safe_text = st.text(max_size=30).filter(lambda t: "<tool_call>" not in t and "</tool_call>" not in t)


@fuzz(200)
@given(content=safe_text, calls=st.lists(st.tuples(names, args), max_size=3))
def test_rendered_assistant_turns_parse_back_to_themselves(content, calls):
    fmt = ChatFormat()
    m = Message(
        role="assistant",
        content=content or None,
        tool_calls=[ToolCall(id=f"call_{i}", name=n, arguments=a) for i, (n, a) in enumerate(calls)] or None,
    )
    back = fmt.parse_assistant(fmt.assistant_body(m))
    assert back.malformed is None
    assert [(c.name, c.arguments) for c in back.tool_calls or []] == calls
    if not content.strip().startswith("<think>"):
        assert (back.content or "") == content.strip()


@fuzz(200)
@given(d=json_values | st.dictionaries(st.sampled_from(["role", "content", "tool_calls", "x"]), json_values))
def test_openai_message_reader_raises_only_value_errors_naming_the_place(d):
    try:
        m = from_openai(d, "messages[3]")
    except ValueError as e:
        assert str(e).startswith("messages[3]")
    else:
        assert isinstance(m, Message)


@pytest.fixture(scope="module")
def tau2_domains():
    pytest.importorskip("tau2")
    from eigen_core.domains import get_domain
    from eigen_core.domains.tau2.tasks import load_tasks

    return {
        name: (get_domain(name), load_tasks(name, "base")[:5]) for name in ("airline", "retail", "telecom")
    }


@st.composite
def tool_calls(draw, schemas):
    names = [s["function"]["name"] for s in schemas] + ["nope", ""]
    name = draw(st.sampled_from(names))
    params = next((s["function"]["parameters"] for s in schemas if s["function"]["name"] == name), {})
    keys = st.sampled_from([*params.get("properties", {}), "extra"])
    arguments = draw(st.dictionaries(keys, json_values, max_size=4) | st.text(max_size=20))
    return ToolCall(id="c", name=name, arguments=arguments)


@fuzz(60)
@given(data=st.data())
def test_tau2_tools_on_arbitrary_arguments_answer_errors_and_change_nothing(tau2_domains, data):
    name = data.draw(st.sampled_from(sorted(tau2_domains)))
    domain, tasks = tau2_domains[name]
    env = domain.make_env(data.draw(st.sampled_from(tasks)))
    for call in data.draw(st.lists(tool_calls(domain.tool_schemas()), min_size=1, max_size=4)):
        before = copy.deepcopy(env.state())
        res = env.call(call)  # must not raise
        assert isinstance(res.content, str)
        if res.error:
            assert env.state() == before, (name, call, res.content)


_SECTIONS = {
    "server": ["host", "port", "progress_every", "api_key_env", "nope"],
    "episode": ["max_steps", "concurrency", "prompt", "user", "turn_tokens", "max_len"],
    "verifier": ["components", "checker_timeout_s", "allow_weak_sandbox"],
    "agent": ["url", "model", "timeout_s", "tokenizer"],
    "domain": ["name"],
    "bogus": ["x"],
}


@st.composite
def configs(draw):
    out = {}
    for section in draw(st.sets(st.sampled_from(sorted(_SECTIONS)), max_size=3)):
        keys = st.sampled_from(_SECTIONS[section])
        out[section] = draw(st.dictionaries(keys, json_values, max_size=3) | json_values)
    return out


@fuzz(200)
@given(doc=configs() | st.text(max_size=80))
def test_config_loader_accepts_or_names_the_bad_key(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(doc) if isinstance(doc, dict) else doc)
    try:
        load_config(RolloutServerConfig, path, foreign_sections=())
    except ConfigError as e:
        msg = str(e)
        assert str(path) in msg
        if isinstance(doc, dict) and "invalid YAML" not in msg:
            # the message points at a section the document has, or at the top level
            assert any(s in msg for s in doc) or "top level" in msg or "mapping" in msg, msg


class _EchoSampler:
    max_len, version, prefix_cache = 64, 0, None

    async def generate(self, prompt, sp):
        if len(prompt) + sp.max_new_tokens > self.max_len:
            from eigen_jax.sampler import ContextOverflow

            raise ContextOverflow(f"{len(prompt)} + {sp.max_new_tokens} tokens")
        ids = list(prompt[: min(sp.max_new_tokens, 4)])
        return Generation(tokens=ids, logprobs=[-1.0] * len(ids), finish_reason="length", version=0)


request_bodies = (
    json_values
    | st.dictionaries(
        st.sampled_from(
            [
                "model",
                "prompt",
                "messages",
                "max_tokens",
                "temperature",
                "top_p",
                "top_k",
                "n",
                "seed",
                "stream",
                "logprobs",
                "tools",
                "stop",
                "response_format",
                "stream_options",
                "task",
                "version",
                "sample_index",
                "group_id",
            ]
        ),
        json_values | st.lists(st.integers(0, 300), max_size=70),
        max_size=6,
    )
    | st.builds(
        lambda extra: {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **extra},
        st.dictionaries(
            st.sampled_from(["n", "stream", "temperature", "seed", "tools"]), json_values, max_size=2
        ),
    )
)


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    """App factories (an aiohttp app belongs to the event loop that first runs it)."""
    root = tmp_path_factory.mktemp("apps")
    tok = build_small_tokenizer(["hello world, where is my order"], 300)
    tok.save(root / "tok")
    sb = Sandbox(1, 2.0, 256)
    agent = {"tokenizer": str(root / "tok"), "url": "http://127.0.0.1:9", "max_retries": 0}
    cfg = RolloutServerConfig.model_validate({"agent": agent})
    yield {  # ``limits``: the server section (its deadlines); the default one if None
        "serve": lambda limits=None: Server(_EchoSampler(), tok, "m").app(None, limits),
        "rollout": lambda limits=None: RolloutServer(
            cfg.model_copy(update={"server": limits}) if limits else cfg, sb
        ).app(),
    }
    sb.close()


_ROUTES = {
    "serve": ["/v1/completions", "/v1/chat/completions", "/collective_rpc", "/pause", "/resume"],
    "rollout": ["/episode", "/version"],
}


@fuzz(150)
@given(data=st.data())
def test_http_servers_answer_malformed_requests_with_4xx_never_5xx(apps, data):
    which = data.draw(st.sampled_from(sorted(apps)))
    route = data.draw(st.sampled_from(_ROUTES[which]))
    raw = data.draw(
        request_bodies.map(lambda b: json.dumps(b).encode())
        | st.binary(max_size=60)
        | st.just(b'{"messages": [' * 200)
    )

    async def go():
        server = TestServer(apps[which]())
        await server.start_server()
        try:
            async with ClientSession() as s:
                async with s.post(
                    server.make_url(route), data=raw, headers={"Content-Type": "application/json"}
                ) as r:
                    await r.read()
                    return r.status
        finally:
            await server.close()

    status = asyncio.run(go())
    assert status < 500, (which, route, raw[:200])


def test_oversized_bodies_are_refused(apps):
    async def go():
        server = TestServer(apps["serve"]())
        await server.start_server()
        try:
            async with ClientSession() as s:
                big = b'{"prompt": "' + b"x" * (65 * 2**20) + b'"}'
                async with s.post(server.make_url("/v1/completions"), data=big) as r:
                    return r.status
        finally:
            await server.close()

    assert asyncio.run(go()) == 413


async def _stalled(data: bytes, port: int) -> bytes:
    """Send ``data`` and no more; everything the server sends until it closes the connection."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    await w.drain()
    try:
        return await asyncio.wait_for(r.read(), 30)
    finally:
        w.close()


_BODY_HEAD = b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{"  # then stalls


@contextlib.asynccontextmanager
async def _serving(app: web.Application, limits: ServerSection):
    """``app`` on a free local port under ``limits``' deadlines, as ``http_limits.run`` serves it."""
    runner = web.AppRunner(app, **runner_options(limits))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("which", ["serve", "rollout"])
def test_slow_clients_are_cut_off_while_others_are_served(apps, which):
    """Slowloris: a client that stops half-way through its headers is disconnected, one that
    stops half-way through its body gets 408, and a normal request meanwhile is answered."""
    limits = ServerSection(idle_timeout_s=1.0, read_timeout_s=1.0)
    route = _ROUTES[which][0]

    async def go():
        async with _serving(apps[which](limits), limits) as port:
            head = f"POST {route} HTTP/1.1\r\nHost: x\r\n".encode()
            half_headers = asyncio.create_task(_stalled(head, port))
            half_body = asyncio.create_task(_stalled(head + _BODY_HEAD, port))
            await asyncio.sleep(0.2)  # both stalled clients are connected
            async with ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{port}/health") as r:
                    healthy = r.status
            return healthy, await half_headers, await half_body

    healthy, headers_answer, body_answer = asyncio.run(go())
    assert healthy == 200
    assert headers_answer == b""  # closed without an answer
    assert body_answer.startswith(b"HTTP/1.1 408"), body_answer[:200]
    assert b"server.read_timeout_s" in body_answer


@pytest.mark.parametrize("which", ["serve", "rollout"])
def test_a_full_server_answers_429_with_retry_after_and_its_health_check_still_answers(apps, which):
    """server.max_inflight: with its one slot held by a request whose body stalls, the next
    request is answered 429 with Retry-After (clients retry), /health is answered, and once the
    stalled request is cut off (408) the slot is free again."""
    limits = ServerSection(max_inflight=1, read_timeout_s=1.5)
    route = _ROUTES[which][0]

    async def go():
        async with _serving(apps[which](limits), limits) as port:
            url = f"http://127.0.0.1:{port}"
            head = f"POST {route} HTTP/1.1\r\nHost: x\r\n".encode()
            holder = asyncio.create_task(_stalled(head + _BODY_HEAD, port))
            await asyncio.sleep(0.3)  # the stalled request holds the slot
            async with ClientSession() as s:
                async with s.post(url + route, json={}) as r:
                    full = (r.status, r.headers.get("Retry-After"), await r.json())
                async with s.get(url + "/health") as r:
                    healthy = r.status
                held = await holder  # cut off by the body deadline: the slot is released
                async with s.post(url + route, json={}) as r:
                    after = r.status
            return full, healthy, held, after

    (status, retry_after, body), healthy, held, after = asyncio.run(go())
    assert (status, retry_after) == (429, "1") and "server.max_inflight" in body["error"]["message"]
    assert healthy == 200 and held.startswith(b"HTTP/1.1 408")
    assert after != 429 and after < 500, after  # served (an error about the empty body, at most)
