"""Near-miss action lists: what a correct verifier must reject."""

from __future__ import annotations

from eigen_core.contracts import Action, Task


def drop_last_write(actions: list[Action], write_tools: frozenset[str]) -> list[Action] | None:
    """``actions`` without its last write; None if there is no write."""
    idx = [i for i, a in enumerate(actions) if a.name in write_tools]
    if not idx:
        return None
    return actions[: idx[-1]] + actions[idx[-1] + 1 :]


def expects_no_change(task: Task, write_tools: frozenset[str]) -> bool:
    """Whether the task's correct outcome leaves the DB as it is (every request must be refused)."""
    return not any(a.name in write_tools for a in task.gold_actions)


def perturbations(task: Task, write_tools: frozenset[str]) -> list[tuple[str, list[Action]]]:
    """Labelled near misses of the gold actions: the last write dropped, each forbidden write
    added. A verifier must score every one of them 0."""
    out: list[tuple[str, list[Action]]] = []
    dropped = drop_last_write(task.gold_actions, write_tools)
    if dropped is not None:
        out.append(("gold minus its last write", dropped))
    out += [(f"gold plus forbidden {a.name}", [*task.gold_actions, a]) for a in task.forbidden_actions]
    return out
