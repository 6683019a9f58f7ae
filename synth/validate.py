"""Self-validation of a task before it enters the pool (the data engine's "task verification").

A task is accepted only if its gold actions run without tool errors and change the state when
they write; its checker (run in the sandbox) passes on the gold outcome; and both the checker and
the DB-hash reward reject the near misses: doing nothing, the gold run with its last write
dropped, the gold run plus any forbidden write, and (when outputs are required) the gold run
without them. A checker that accepts every near miss is rejected as accepting everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from eigen_core.contracts import Action, Message, Task
from eigen_core.domain import Domain, action_to_call, hash_state, replay
from verifiers.perturb import perturbations
from verifiers.sandbox import Sandbox


@dataclass(frozen=True)
class Rejection:
    """Why a task was rejected: a stable ``code`` (for histograms and reflection) and details."""

    code: str
    detail: str


def _final_state(domain: Domain, task: Task, actions: list[Action]) -> tuple[dict, list[str]]:
    env, results = replay(domain, task, [action_to_call(a, i) for i, a in enumerate(actions)])
    errors = [f"{a.name}: {r.content}" for a, r in zip(actions, results, strict=True) if r.error]
    return env.state(), errors


def check_task(task: Task, domain: Domain, sandbox: Sandbox) -> list[Rejection]:
    """Coded reasons to reject ``task`` (empty list: it is valid)."""
    out: list[Rejection] = []
    initial = domain.make_env(task).state()
    gold, errors = _final_state(domain, task, task.gold_actions)
    if errors:
        return [Rejection("gold_action_error", f"gold action failed: {e}") for e in errors]
    has_write = any(a.name in domain.write_tools for a in task.gold_actions)
    changes = hash_state(gold) != hash_state(initial)
    if has_write and not changes:
        out.append(Rejection("no_state_change", "gold writes leave the DB unchanged"))
    if not task.checker:
        return [*out, Rejection("checker_missing", "task has no checker")]
    said = [Message(role="assistant", content="Done: " + "; ".join(task.required_outputs)).model_dump()]
    silent = [Message(role="assistant", content="Done.").model_dump()]

    res = sandbox.run(task.checker, [initial, gold, said])
    if not res.passed:
        out.append(Rejection("checker_rejects_gold", f"checker fails the gold outcome: {res.reason}"))

    lenient: list[Rejection] = []
    misses = 0
    near = [
        (label, _final_state(domain, task, acts)[0])
        for label, acts in perturbations(task, domain.write_tools)
    ]
    if changes:
        near.append(("doing nothing", initial))
    for label, state in near:
        misses += 1
        if hash_state(state) == hash_state(gold):
            out.append(Rejection("ambiguous_outcome", f"DB hash cannot tell {label} from gold"))
        if sandbox.run(task.checker, [initial, state, said]).passed:
            lenient.append(Rejection("checker_too_lenient", f"checker passes {label}"))
    if task.required_outputs:
        misses += 1
        if sandbox.run(task.checker, [initial, gold, silent]).passed:
            lenient.append(
                Rejection("checker_too_lenient", "checker passes when the required outputs are never said")
            )
    if misses and len(lenient) == misses and res.passed:
        detail = f"checker passes all {misses} near misses of the gold outcome: " + "; ".join(
            r.detail for r in lenient
        )
        return [*out, Rejection("checker_accepts_everything", detail)]
    return out + lenient


def validate_task(task: Task, domain: Domain, sandbox: Sandbox) -> list[str]:
    """Reasons to reject ``task`` (empty list: it is valid)."""
    return [r.detail for r in check_task(task, domain, sandbox)]
