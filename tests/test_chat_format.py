import pytest
from transformers import AutoTokenizer

from eigen_core.chat_format import ChatFormat
from eigen_core.contracts import Message, ToolCall
from eigen_core.domains import get_domain
from eigen_core.tokenizer import Tokenizer, build_small_tokenizer, qwen3_tokenizer_dir

TOOLS = get_domain("shop").tool_schemas()


def _conversation():
    return [
        Message(role="system", content="You are ShopCo's agent. Follow the policy."),
        Message(role="user", content="Cancel order O12345, please — ünïcode too."),
        Message(role="assistant", content="Could you tell me your customer id?"),
        Message(role="user", content="My customer id is C0042."),
        Message(
            role="assistant",
            tool_calls=[ToolCall(id="a", name="get_customer", arguments={"customer_id": "C0042"})],
        ),
        Message(role="tool", tool_call_id="a", content='{"order_ids":["O12345"]}'),
        Message(
            role="assistant",
            content="Checking both.",
            tool_calls=[
                ToolCall(id="b", name="get_order", arguments={"order_id": "O12345"}),
                ToolCall(id="c", name="get_order", arguments='{"order_id": "O9"}'),
            ],
        ),
        Message(role="tool", tool_call_id="b", content='{"status":"pending"}'),
        Message(role="tool", tool_call_id="c", content="Error: order 'O9' not found"),
    ]


@pytest.fixture(scope="module")
def qwen_dir():
    return qwen3_tokenizer_dir()


def _hf_render(qwen_dir, messages, **kw):
    hf = AutoTokenizer.from_pretrained(qwen_dir)
    as_dicts = []
    for m in messages:
        d = {"role": m.role, "content": m.content or ""}
        if m.tool_calls:
            d["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        as_dicts.append(d)
    return hf.apply_chat_template(as_dicts, tokenize=False, **kw)


def test_render_matches_qwen3_chat_template(qwen_dir):
    conv = _conversation()
    fmt = ChatFormat()
    assert fmt.render(conv, TOOLS) == _hf_render(qwen_dir, conv, tools=TOOLS)
    assert fmt.render(conv[:2]) == _hf_render(qwen_dir, conv[:2])
    no_think = ChatFormat(empty_think=True)
    assert no_think.render(conv[:2], TOOLS, add_generation_prompt=True) == _hf_render(
        qwen_dir, conv[:2], tools=TOOLS, add_generation_prompt=True, enable_thinking=False
    )


def test_appending_continuations_is_token_exact(qwen_dir):
    tok = Tokenizer.from_dir(qwen_dir)
    assert tok.vocab_size == 151669 and tok.encode("<|im_start|>") == [151644] and tok.eos_id == 151645
    fmt, conv = ChatFormat(), _conversation()
    ids = tok.encode(fmt.render(conv[:2], TOOLS, add_generation_prompt=True))
    # What a sampler appends: the assistant body and <|im_end|>; then the next turns.
    ids += [*tok.encode(fmt.assistant_body(conv[2])), tok.eos_id]
    ids += tok.encode(fmt.continuation(conv[3:4]))
    ids += [*tok.encode(fmt.assistant_body(conv[4])), tok.eos_id]
    ids += tok.encode(fmt.continuation(conv[5:6], add_generation_prompt=False))
    assert ids == tok.encode(fmt.render(conv[:6], TOOLS))
    assert tok.decode(ids) == fmt.render(conv[:6], TOOLS)


@pytest.mark.parametrize("empty_think", [False, True])
def test_segments_cut_the_render_at_generated_turns(qwen_dir, empty_think):
    tok = Tokenizer.from_dir(qwen_dir)
    fmt, conv = ChatFormat(empty_think=empty_think), _conversation()
    segs = fmt.segments(conv, TOOLS)
    assert "".join(text for text, _ in segs) == fmt.render(conv, TOOLS)
    gen = [text for text, g in segs if g]
    assert gen == [fmt.assistant_body(m) + "<|im_end|>" for m in conv if m.role == "assistant"]
    # tokenizing piece by piece is token-exact: what SFT trains on is what episodes produce
    assert [i for text, _ in segs for i in tok.encode(text)] == tok.encode(fmt.render(conv, TOOLS))
    # ending on an assistant turn: its generated piece, then the template's closing newline
    assert fmt.segments(conv[:3])[-2:] == [(fmt.assistant_body(conv[2]) + "<|im_end|>", True), ("\n", False)]


def test_user_view_flips_roles_and_hides_tools():
    from eigen_core.contracts import UserScenario
    from rollout.user_sim import STOP_TOKENS, user_view

    sc = UserScenario(
        reason_for_call="cancel O12345", known_info={"customer id": "C0042"}, unknown_info=["zip"]
    )
    view = user_view(sc, _conversation()[1:])
    assert [m.role for m in view] == ["system", "assistant", "user", "assistant", "user"]
    assert "C0042" in view[0].content and "zip" in view[0].content and STOP_TOKENS[0] in view[0].content
    assert view[1].content.startswith("Cancel order") and view[4].content == "Checking both."
    assert all(m.tool_calls is None for m in view)


def test_parse_round_trips_and_flags_malformed_output():
    fmt = ChatFormat()
    for m in _conversation():
        if m.role == "assistant":
            parsed = fmt.parse_assistant(fmt.assistant_body(m) + "<|im_end|>")
            assert parsed.content == m.content and parsed.malformed is None
            assert [(c.name, c.arguments) for c in parsed.tool_calls or []] == [
                (c.name, c.parsed_arguments()) for c in m.tool_calls or []
            ]
    think = fmt.parse_assistant("<think>\nhmm\n</think>\n\nHello!")
    assert think.content == "Hello!" and think.tool_calls is None
    bad = {
        '<tool_call>\n{"name": "get_order", "arguments": {"order_id": }\n</tool_call>': "invalid JSON",
        '<tool_call>\n{"arguments": {}}\n</tool_call>': "string 'name'",
        '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>': "must be an object",
        '<tool_call>\n{"name": "f", "arguments": {}}': "unbalanced",
    }
    for text, why in bad.items():
        m = fmt.parse_assistant(text)
        assert m.role == "assistant" and m.tool_calls is None and m.content == text and why in m.malformed


def test_small_tokenizer_round_trips(tmp_path):
    texts = [get_domain("shop").policy, ChatFormat().render(_conversation(), TOOLS)] * 3
    tok = build_small_tokenizer(texts, vocab_size=600)
    assert tok.vocab_size <= 600
    text = ChatFormat().render(_conversation(), TOOLS)
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text.encode()) / 2
    assert tok.encode("<|im_end|>") == [tok.eos_id]
    again = Tokenizer.from_dir(tok.save(tmp_path / "tok"))
    assert again.encode(text) == ids and again.eos_id == tok.eos_id
    assert tok.decode(tok.encode("never seen: 日本語 ✓")) == "never seen: 日本語 ✓"
