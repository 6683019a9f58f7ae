"""ShopCo: the built-in domain. Small enough for a tiny model to learn on a CPU, shaped like
tau²'s retail: a DB, read and write tools, a written policy with refusals, and an id only the
user holds."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from eigen_core.contracts import Task
from eigen_core.domain import ModelToolEnv, Tool, action_to_call
from eigen_core.domains.shop.db import ShopDB
from eigen_core.domains.shop.tools import TOOLS


class ShopDomain:
    """The ``Domain`` for ShopCo. Tasks carry their whole (small) DB inline."""

    name = "shop"

    def __init__(self, tools: dict[str, Tool] | None = None):
        self._tools = tools or TOOLS
        self.write_tools = frozenset(n for n, t in self._tools.items() if t.writes)
        self.terminal_tools = frozenset(n for n, t in self._tools.items() if t.terminal)

    @cached_property
    def policy(self) -> str:
        return (Path(__file__).parent / "policy.md").read_text()

    def tool_schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self._tools.values()]

    def make_env(self, task: Task) -> ModelToolEnv:
        init = task.initial_state
        if init.reference is not None or init.data is None:
            raise ValueError(f"task {task.id}: shop tasks need inline initial_state.data")
        env = ModelToolEnv(ShopDB.model_validate(init.data), self._tools)
        for i, action in enumerate(init.actions):
            result = env.call(action_to_call(action, i))
            if result.error:
                raise ValueError(f"task {task.id}: init action {action.name} failed: {result.content}")
        return env
