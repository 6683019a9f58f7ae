"""tau²-style rewards: DB-state hash against a gold replay, required outputs, and the task's checker.

Like tau², the DB check replays the trajectory's tool calls and the gold actions in fresh
environments and compares the sha256 of the two final states; an episode that ended other than by
a user or agent stop scores 0. The checker (untrusted code) runs only in the ``Sandbox``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from rollout.contracts import Message, RewardInfo, Task, Termination, Trajectory
from rollout.domain import Domain, action_to_call, hash_state, replay
from verifiers.sandbox import Sandbox

Component = Literal["db", "outputs", "checker"]
_REWARDABLE = (Termination.USER_STOP, Termination.AGENT_STOP)


def agent_text(messages: Sequence[Message]) -> str:
    """All assistant text, lower-cased with commas removed (tau²'s normalisation)."""
    parts = [m.content for m in messages if m.role == "assistant" and m.content]
    return " ".join(parts).lower().replace(",", "")


def missing_outputs(required: Sequence[str], messages: Sequence[Message]) -> list[str]:
    """Required outputs that no assistant message contains (case-insensitive substring)."""
    text = agent_text(messages)
    return [r for r in required if r.lower().replace(",", "") not in text]


def gold_state(domain: Domain, task: Task) -> dict:
    """The DB after replaying the gold (assistant and user) actions on the initial state."""
    env, _ = replay(domain, task, [action_to_call(a, i) for i, a in enumerate(task.gold_actions)])
    return env.state()


class Verifier:
    """Scores trajectories of one domain. ``components`` chooses what the reward requires.

    The gold final hash is cached per task id, so a group of G samples replays gold once.
    """

    def __init__(
        self,
        domain: Domain,
        sandbox: Sandbox | None = None,
        components: Sequence[Component] = ("db", "outputs", "checker"),
    ):
        if "checker" in components and sandbox is None:
            raise ValueError("the 'checker' reward component needs a Sandbox")
        self.domain = domain
        self.sandbox = sandbox
        self.components = tuple(components)
        self._gold_hash: dict[str, str] = {}

    def _gold_hash_for(self, task: Task) -> str:
        if task.id not in self._gold_hash:
            self._gold_hash[task.id] = hash_state(gold_state(self.domain, task))
        return self._gold_hash[task.id]

    async def score(self, task: Task, traj: Trajectory) -> RewardInfo:
        """Reward 1.0 iff every configured component passes; reasons name each failure."""
        if traj.termination not in _REWARDABLE:
            return RewardInfo(
                reward=0.0, reasons={"termination": f"episode ended by {traj.termination.value}"}
            )
        comps: dict[str, float] = {}
        reasons: dict[str, str] = {}
        env, _ = replay(self.domain, task, traj.tool_calls())
        final = env.state()
        if "db" in self.components:
            ok = env.state_hash() == self._gold_hash_for(task)
            comps["db"] = float(ok)
            if not ok:
                reasons["db"] = "final DB state differs from the gold replay"
        if "outputs" in self.components:
            missing = missing_outputs(task.required_outputs, traj.messages)
            comps["outputs"] = float(not missing)
            if missing:
                reasons["outputs"] = f"agent never said: {missing}"
        if "checker" in self.components and task.checker:
            assert self.sandbox is not None
            initial = self.domain.make_env(task).state()
            msgs = [m.model_dump(mode="json") for m in traj.messages]
            res = await self.sandbox.arun(task.checker, [initial, final, msgs])
            comps["checker"] = float(res.passed)
            if not res.passed:
                reasons["checker"] = res.reason
        reward = float(all(v == 1.0 for v in comps.values()))
        return RewardInfo(reward=reward, components=comps, reasons=reasons)
