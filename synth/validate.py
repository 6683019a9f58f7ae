"""Self-validation of a task before it enters the pool.

A task is accepted only if its gold actions run without tool errors, its checker passes on the
gold outcome, and both the checker and the DB-hash reward reject the near misses: the gold run
with its last write dropped, the gold run plus any forbidden write, and (when outputs are
required) the gold run without them. Returns the reasons a task is rejected (empty: accepted).
"""

from __future__ import annotations

from rollout.contracts import Action, Message, Task
from rollout.domain import Domain, action_to_call, hash_state, replay
from verifiers.perturb import perturbations
from verifiers.sandbox import Sandbox


def _final_state(domain: Domain, task: Task, actions: list[Action]) -> tuple[dict, list[str]]:
    env, results = replay(domain, task, [action_to_call(a, i) for i, a in enumerate(actions)])
    errors = [f"{a.name}: {r.content}" for a, r in zip(actions, results, strict=True) if r.error]
    return env.state(), errors


def validate_task(task: Task, domain: Domain, sandbox: Sandbox) -> list[str]:
    """Reasons to reject ``task`` (empty list: it is valid)."""
    reasons: list[str] = []
    initial = domain.make_env(task).state()
    gold, errors = _final_state(domain, task, task.gold_actions)
    if errors:
        return [f"gold action failed: {e}" for e in errors]
    has_write = any(a.name in domain.write_tools for a in task.gold_actions)
    if has_write and hash_state(gold) == hash_state(initial):
        reasons.append("gold writes leave the DB unchanged")
    if not task.checker:
        return [*reasons, "task has no checker"]
    said = [Message(role="assistant", content="Done: " + "; ".join(task.required_outputs)).model_dump()]
    silent = [Message(role="assistant", content="Done.").model_dump()]

    res = sandbox.run(task.checker, [initial, gold, said])
    if not res.passed:
        reasons.append(f"checker fails the gold outcome: {res.reason}")

    for label, actions in perturbations(task, domain.write_tools):
        state, _ = _final_state(domain, task, actions)
        if hash_state(state) == hash_state(gold):
            reasons.append(f"DB hash cannot tell {label} from gold")
        if sandbox.run(task.checker, [initial, state, said]).passed:
            reasons.append(f"checker passes {label}")
    if task.required_outputs and sandbox.run(task.checker, [initial, gold, silent]).passed:
        reasons.append("checker passes when the required outputs are never said")
    return reasons
