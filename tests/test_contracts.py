import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from eigen_core.contracts import Message, RewardInfo, Task, Termination, ToolCall, ToolResult, Trajectory

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=10,
)
tool_calls = st.builds(
    ToolCall,
    id=st.text(min_size=1, max_size=8),
    name=st.text(max_size=12),
    arguments=st.dictionaries(st.text(max_size=8), json_values, max_size=4) | st.text(max_size=30),
)
messages = st.one_of(
    st.builds(Message, role=st.sampled_from(["system", "user"]), content=st.text(max_size=40)),
    st.builds(
        Message,
        role=st.just("assistant"),
        content=st.none() | st.text(max_size=40),
        tool_calls=st.none() | st.lists(tool_calls, min_size=1, max_size=3),
    ),
    st.builds(
        Message,
        role=st.just("tool"),
        content=st.text(max_size=40),
        tool_call_id=st.text(min_size=1, max_size=8),
    ),
)


@st.composite
def trajectories(draw):
    n = draw(st.integers(0, 20))
    logprob = st.floats(max_value=0.0, allow_nan=False) | st.just(-math.inf)
    return Trajectory(
        task_id=draw(st.text(max_size=10)),
        group_id=draw(st.text(max_size=5)),
        sample_index=draw(st.integers(0, 64)),
        messages=draw(st.lists(messages, max_size=6)),
        tokens=draw(st.lists(st.integers(0, 200_000), min_size=n, max_size=n)),
        loss_mask=draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n)),
        behaviour_logprobs=draw(st.lists(logprob, min_size=n, max_size=n)),
        versions=draw(st.lists(st.integers(-1, 100), min_size=n, max_size=n)),
        reward_info=draw(st.none() | st.builds(RewardInfo, reward=st.floats(0, 1))),
        termination=draw(st.sampled_from(list(Termination))),
        timings={"total": draw(st.floats(0, 1e4))},
    )


@settings(max_examples=60, deadline=None)
@given(trajectories())
def test_trajectory_json_round_trip_is_lossless(traj):
    again = Trajectory.model_validate_json(traj.model_dump_json())
    assert again == traj
    assert again.model_dump_json() == traj.model_dump_json()


@settings(max_examples=60, deadline=None)
@given(messages)
def test_message_json_round_trip_is_lossless(msg):
    assert Message.model_validate_json(msg.model_dump_json()) == msg


def test_generated_tasks_round_trip(shop_tasks):
    for task in shop_tasks:
        assert Task.model_validate_json(task.model_dump_json()) == task


def test_message_role_rules():
    with pytest.raises(ValidationError, match="tool_call_id"):
        Message(role="tool", content="x")
    with pytest.raises(ValidationError, match="only assistant and user"):
        Message(role="system", tool_calls=[ToolCall(id="1", name="f")])
    Message(role="user", tool_calls=[ToolCall(id="1", name="toggle_airplane_mode")])  # user-side tools
    with pytest.raises(ValidationError, match="extra"):
        Message.model_validate({"role": "user", "content": "hi", "bogus": 1})


def test_trajectory_token_arrays_must_align():
    with pytest.raises(ValidationError, match="loss_mask has 1 entries, tokens has 2"):
        Trajectory(
            task_id="t",
            messages=[],
            tokens=[1, 2],
            loss_mask=[1],
            behaviour_logprobs=[0, 0],
            versions=[0, 0],
            termination="user_stop",
        )


def test_tool_call_argument_parsing():
    assert ToolCall(id="1", name="f", arguments='{"a": 1}').parsed_arguments() == {"a": 1}
    with pytest.raises(ValueError, match="not valid JSON"):
        ToolCall(id="1", name="f", arguments="{a: 1").parsed_arguments()
    with pytest.raises(ValueError, match="JSON object"):
        ToolCall(id="1", name="f", arguments="[1, 2]").parsed_arguments()


def test_tool_result_to_message():
    m = ToolResult(tool_call_id="c1", name="f", content="ok").to_message()
    assert m.role == "tool" and m.tool_call_id == "c1" and m.content == "ok"


def test_reward_lives_in_reward_info_and_legacy_records_read():
    """One home for the reward: ``reward`` reads ``reward_info``; records written with a
    top-level ``reward`` load into it, and one contradicting its ``reward_info`` is refused."""
    base = {"task_id": "t", "messages": [], "termination": "user_stop"}
    assert Trajectory.model_validate(base).reward is None
    old = Trajectory.model_validate({**base, "reward": 1.0})
    assert old.reward == 1.0 and old.reward_info == RewardInfo(reward=1.0)
    both = {**base, "reward": 0.0, "reward_info": {"reward": 0.0, "components": {"db": 0.0}}}
    assert Trajectory.model_validate(both).reward_info.components == {"db": 0.0}
    with pytest.raises(ValueError, match="contradicts"):
        Trajectory.model_validate({**base, "reward": 1.0, "reward_info": {"reward": 0.0}})
    t = Trajectory(task_id="t", messages=[], termination=Termination.USER_STOP).scored(RewardInfo(reward=1.0))
    assert t.reward == 1.0 and "reward" not in t.model_dump()
