"""tau²-style rewards: DB-state hash against a gold replay, required outputs, gold actions
performed, assertions on the final environment, and the task's sandboxed checker.

Each component follows tau²'s evaluator to the letter (the parity tests run both on the same
trajectories): the DB check replays the trajectory's tool calls (agent's and user's) and the gold
actions in fresh environments and compares the hashes of the final states; a required output must
appear, lower-cased, in one assistant message's text with its commas removed; a gold action counts
as done when some call has its name and equal compared arguments; an episode that ended other
than by a user or agent stop scores 0. As in tau², a conversation whose tool calls return other
outputs on replay is refused (``ReplayMismatch``: it did not happen in this task's environment),
the replayed environment syncs once more at the end, and a task converted from tau² with neither
actions nor env assertions (null, not empty) passes the DB check unchecked. The checker
(untrusted code) runs only in the ``Sandbox``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from eigen_core.contracts import Action, Message, RewardComponent, RewardInfo, Task, Termination, Trajectory
from eigen_core.domain import Domain, ToolEnv, action_to_call, replay, replay_conversation
from verifiers.sandbox import Sandbox

Component = RewardComponent
_REWARDABLE = (Termination.USER_STOP, Termination.AGENT_STOP)


def _has_text(m: Message) -> bool:
    return m.content is not None and m.content.strip() != ""


def missing_outputs(required: Sequence[str], messages: Sequence[Message]) -> list[str]:
    """Required outputs that no single assistant message contains (tau²: ``info.lower()`` in the
    message's lower-cased text with commas removed)."""
    texts = [m.content.lower().replace(",", "") for m in messages if m.role == "assistant" and _has_text(m)]
    return [r for r in required if not any(r.lower() in t for t in texts)]


def missing_actions(gold: Sequence[Action], traj: Trajectory) -> list[Action]:
    """Gold actions that no tool call of the trajectory (agent's or user's) performs."""
    calls = traj.tool_calls()
    return [a for a in gold if not any(a.matches(c) for c in calls)]


def action_credit(gold: Sequence[Action], traj: Trajectory, write_tools: Collection[str]) -> float:
    """Partial credit in [-1, 1] for a trajectory's state-changing calls: the share of the gold
    write actions it performed, minus 1 if any of its write calls matches no gold action (a
    wrong, forbidden or mis-addressed write). Training-time shaping only: pass^k stays binary."""
    writes = [a for a in gold if a.name in write_tools]
    calls = [c for c in traj.tool_calls() if c.name in write_tools]
    done = sum(any(a.matches(c) for c in calls) for a in writes)
    stray = any(not any(a.matches(c) for a in writes) for c in calls)
    return (done / len(writes) if writes else 0.0) - float(stray)


def gold_env(domain: Domain, task: Task) -> ToolEnv:
    """The environment after the gold actions (the domain's own recipe when it has one)."""
    own = getattr(domain, "gold_env", None)
    if own is not None:
        return own(task)
    env, _ = replay(domain, task, [action_to_call(a, i) for i, a in enumerate(task.gold_actions)])
    return env


def gold_state(domain: Domain, task: Task) -> dict[str, Any]:
    """The DB after replaying the gold (assistant and user) actions on the initial state."""
    return gold_env(domain, task).state()


def unchecked_components(task: Task) -> frozenset[str]:
    """Components tau²'s evaluator passes without checking, for a task that came from tau²'s
    format: every one when the task has no evaluation criteria; the DB and env-assertion checks
    when its actions and its env assertions are both null (not empty lists)."""
    if task.metadata.get("no_evaluation_criteria"):
        return frozenset(("db", "outputs", "actions", "env_assertions", "checker"))
    if {"actions", "env_assertions"} <= set(task.metadata.get("null_criteria", ())):
        return frozenset(("db", "env_assertions"))
    return frozenset()


def failed_assertions(env: ToolEnv, task: Task) -> list[str]:
    """Messages of the task's env assertions that do not hold in ``env``."""
    check = getattr(env, "check_assertion", None)
    if check is None:
        return (
            [f"the {type(env).__name__} environment cannot run env assertions"] if task.env_assertions else []
        )
    return [
        a.message or f"{a.name}({a.arguments}) != {a.assert_value}"
        for a in task.env_assertions
        if not check(a)
    ]


class Verifier:
    """Scores trajectories of one domain. A task's ``reward_basis`` says what its reward requires;
    ``components`` is the default for tasks that do not say.

    The gold final hash is cached per task id, so a group of G samples replays gold once.
    """

    def __init__(
        self,
        domain: Domain,
        sandbox: Sandbox | None = None,
        components: Sequence[Component] = ("db", "outputs", "checker"),
        basis: Sequence[Component] | None = None,
    ):
        """``basis``: what a reward requires for every task, overriding each task's own
        ``reward_basis`` (a training reward basis; None: the task's, else ``components``)."""
        if "checker" in [*components, *(basis or ())] and sandbox is None:
            raise ValueError("the 'checker' reward component needs a Sandbox")
        self.domain = domain
        self.sandbox = sandbox
        self.components = tuple(components)
        self.basis = tuple(basis) if basis is not None else None
        self._gold_hash: dict[str, str] = {}

    def _gold_hash_for(self, task: Task) -> str:
        if task.id not in self._gold_hash:
            self._gold_hash[task.id] = gold_env(self.domain, task).state_hash()
        return self._gold_hash[task.id]

    async def score(self, task: Task, traj: Trajectory) -> RewardInfo:
        """Reward 1.0 iff every required component passes; reasons name each failure."""
        if traj.termination not in _REWARDABLE:
            return RewardInfo(
                reward=0.0, reasons={"termination": f"episode ended by {traj.termination.value}"}
            )
        own = tuple(task.reward_basis) if task.reward_basis is not None else self.components
        wanted = self.basis or own
        free = unchecked_components(task)
        comps: dict[str, float] = {c: 1.0 for c in wanted if c in free}
        wanted = tuple(c for c in wanted if c not in free)
        reasons: dict[str, str] = {}
        env = replay_conversation(self.domain, task, traj.messages)
        if "db" in wanted:
            ok = env.state_hash() == self._gold_hash_for(task)
            comps["db"] = float(ok)
            if not ok:
                reasons["db"] = "final DB state differs from the gold replay"
        if "outputs" in wanted:
            missing = missing_outputs(task.required_outputs, traj.messages)
            comps["outputs"] = float(not missing)
            if missing:
                reasons["outputs"] = f"agent never said: {missing}"
        if "actions" in wanted:
            undone = missing_actions(task.gold_actions, traj)
            comps["actions"] = float(not undone)
            if undone:
                reasons["actions"] = "not performed: " + ", ".join(f"{a.name}({a.arguments})" for a in undone)
        if "env_assertions" in wanted:
            failed = failed_assertions(env, task)
            comps["env_assertions"] = float(not failed)
            if failed:
                reasons["env_assertions"] = "; ".join(failed)
        if "checker" in wanted and task.checker:
            if self.sandbox is None:
                raise ValueError(f"task {task.id} needs its checker run, but this Verifier has no Sandbox")
            initial = self.domain.make_env(task).state()
            msgs = [m.model_dump(mode="json") for m in traj.messages]
            res = await self.sandbox.arun(task.checker, [initial, env.state(), msgs])
            comps["checker"] = float(res.passed)
            if not res.passed:
                reasons["checker"] = res.reason
        reward = float(all(v == 1.0 for v in comps.values()))
        return RewardInfo(reward=reward, components=comps, reasons=reasons)
