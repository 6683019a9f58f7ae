import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eigen_core.contracts import ToolCall
from eigen_core.domain import canonical_json, hash_state


def _env(shop, task):
    return shop.make_env(task)


def test_tools_and_schemas(shop):
    names = {s["function"]["name"] for s in shop.tool_schemas()}
    assert names == {"get_customer", "get_order", "cancel_order", "return_order", "transfer_to_human"}
    assert shop.write_tools == {"cancel_order", "return_order"}
    assert shop.terminal_tools == {"transfer_to_human"}
    schema = next(s for s in shop.tool_schemas() if s["function"]["name"] == "get_order")
    assert schema["function"]["parameters"]["required"] == ["order_id"]
    assert "pending" in shop.policy and "customer id" in shop.policy


def test_cancel_changes_state_and_reports_refund(shop, shop_tasks):
    task = next(t for t in shop_tasks if any(a.name == "cancel_order" for a in t.gold_actions))
    oid = next(a.arguments["order_id"] for a in task.gold_actions if a.name == "cancel_order")
    env = _env(shop, task)
    before = env.state_hash()
    res = env.call(ToolCall(id="1", name="cancel_order", arguments={"order_id": oid}))
    assert not res.error
    out = json.loads(res.content)
    assert out["status"] == "cancelled" and out["refund"] in task.required_outputs
    assert env.state_hash() != before
    again = env.call(ToolCall(id="2", name="cancel_order", arguments={"order_id": oid}))
    assert again.error and "already cancelled" in again.content


def test_malformed_calls_are_error_observations(shop, shop_tasks):
    env = _env(shop, shop_tasks[0])
    before = env.state_hash()
    cases = {
        "unknown tool": ToolCall(id="1", name="delete_everything", arguments={}),
        "not valid JSON": ToolCall(id="2", name="get_order", arguments='{"order_id": '),
        "JSON object": ToolCall(id="3", name="get_order", arguments='"O1"'),
        "missing argument 'order_id'": ToolCall(id="4", name="get_order", arguments={}),
        "unexpected argument 'x'": ToolCall(id="5", name="get_order", arguments={"order_id": "O1", "x": 1}),
        "argument 'order_id'": ToolCall(id="6", name="cancel_order", arguments={"order_id": 12345}),
        "not found": ToolCall(id="7", name="return_order", arguments={"order_id": "O00000"}),
    }
    for expected, call in cases.items():
        res = env.call(call)
        assert res.error, expected
        assert expected in res.content, (expected, res.content)
        assert res.tool_call_id == call.id
    assert env.state_hash() == before


def test_state_hash_is_canonical():
    a = {"b": [1, {"y": 2, "x": 1}], "a": "é"}
    b = json.loads(json.dumps({"a": "é", "b": [1, {"x": 1, "y": 2}]}))
    assert canonical_json(a) == canonical_json(b)
    assert hash_state(a) == hash_state(b)
    assert hash_state(a) != hash_state({**a, "a": "e"})


arg_values = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def random_calls(draw, ids):
    name = draw(
        st.sampled_from(
            ["get_customer", "get_order", "cancel_order", "return_order", "transfer_to_human", "nope", ""]
        )
    )
    keys = st.sampled_from(["order_id", "customer_id", "summary", "extra"])
    value = st.sampled_from(ids) | arg_values
    args = draw(st.dictionaries(keys, value, max_size=3) | st.text(max_size=30))
    return ToolCall(id="c", name=name, arguments=args)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_calls_never_raise_and_rejected_calls_change_nothing(shop, shop_tasks, data):
    task = data.draw(st.sampled_from(shop_tasks))
    db = task.initial_state.data
    ids = sorted(db["orders"]) + sorted(db["customers"])
    env = _env(shop, task)
    for call in data.draw(st.lists(random_calls(ids), min_size=1, max_size=6)):
        before = copy.deepcopy(env.state())
        res = env.call(call)  # must not raise
        if res.error:
            assert env.state() == before, (call, res.content)
        elif call.name not in shop.write_tools:
            assert env.state() == before
