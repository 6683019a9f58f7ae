"""tau²-bench domains as our ``Domain``: tau²'s own tools, policy and DB behind our ``ToolEnv``.

The tools are tau²'s code, called the way tau²'s orchestrator calls them
(``Environment.get_response``: exceptions become ``Error: ...`` observations, user and agent
sides kept apart, the telecom phone synced after every call), so behaviour matches tau² by
construction; the reward parity tests check that it does.

The DB is parsed once per process and every environment gets a copy-on-access view of it
(``cow.py``); the initial state of a task (data patches, initialization functions) is applied as
tau²'s ``set_state`` does.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from typing import Any

from pydantic import ValidationError

from eigen_core import snapshots
from eigen_core.contracts import Action, EnvAssertion, Task, ToolCall, ToolResult
from eigen_core.domains.tau2._import import tau2_module
from eigen_core.domains.tau2.cow import cow_copy
from eigen_core.domains.tau2.tasks import DOMAINS


class Tau2Env:
    """One episode's tau² environment as a ``ToolEnv``, plus what tau²'s evaluator needs:
    assertions on the final state and the agent/user DB hashes."""

    def __init__(self, env: Any):
        self.env = env
        self._msg = tau2_module("data_model.message")

    def call(self, call: ToolCall) -> ToolResult:
        try:
            args = call.parsed_arguments()
        except ValueError as e:
            return ToolResult(tool_call_id=call.id, name=call.name, content=f"Error: {e}", error=True)
        tc = self._msg.ToolCall(id=call.id, name=call.name, arguments=args, requestor=call.requestor)
        out = self.env.get_response(tc)
        return ToolResult(tool_call_id=call.id, name=call.name, content=out.content or "", error=out.error)

    def run_action(self, action: Action) -> str | None:
        """Apply a gold action as tau²'s evaluator does for its gold environment: no sync, and an
        error is ignored (the gold DB is whatever the actions achieve) but returned, for reports."""
        try:
            self.env.make_tool_call(action.name, requestor=action.requestor, **action.arguments)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    def settle(self) -> None:
        """tau²'s sync of the user's device with the agent's DB, as its ``set_state`` runs once
        more after replaying a conversation (every successful call syncs; a failed one does not)."""
        self.env.sync_tools()

    def check_assertion(self, a: EnvAssertion) -> bool:
        """Whether ``a`` holds now (tau²'s ``run_env_assertion``)."""
        tasks = tau2_module("data_model.tasks")
        spec = tasks.EnvAssertion(
            env_type=a.requestor,
            func_name=a.name,
            arguments=a.arguments,
            assert_value=a.assert_value,
            message=a.message,
        )
        return bool(self.env.run_env_assertion(spec, raise_assertion_error=False))

    def state(self) -> dict[str, Any]:
        user = self.env.user_tools
        return {
            "agent": self.env.tools.db.model_dump(mode="json"),
            "user": user.db.model_dump(mode="json") if user is not None else None,
        }

    def hashes(self) -> tuple[str | None, str | None]:
        """tau²'s (agent DB hash, user DB hash): what its evaluator compares."""
        return self.env.get_db_hash(), self.env.get_user_db_hash()

    def state_hash(self) -> str:
        agent, user = self.hashes()
        return hashlib.sha256(f"{agent}|{user}".encode()).hexdigest()


class Tau2Domain:
    """The tau² domain ``name`` (airline, retail or telecom) as a ``Domain``."""

    terminal_tools: frozenset[str] = frozenset()
    """None: in tau², a transfer ends the episode through the user simulator (###TRANSFER###)."""

    def __init__(self, name: str):
        if name not in DOMAINS:
            raise ValueError(f"unknown tau² domain {name!r}; choose one of {', '.join(DOMAINS)}")
        self.name = name
        self._make = tau2_module("registry").registry.get_env_constructor(name)
        probe = self._make()
        self._tool_types = {n: probe.tools.tool_type(n).value for n in probe.tools.tools}
        self.write_tools = frozenset(n for n, t in self._tool_types.items() if t == "write")
        self.policy: str = probe.get_policy()
        self._schemas = [t.openai_schema for t in probe.get_tools()]
        self._user_schemas = [t.openai_schema for t in probe.get_user_tools()] if probe.user_tools else []
        self._db = probe.tools.db
        self._user_db = probe.user_tools.db if probe.user_tools is not None else None
        self._initial_hashes = self._hashes()
        self._snapshots: dict[str, Any] = {}  # snapshot reference -> parsed agent DB
        self._lock = threading.RLock()  # environments are built from several threads

    def tool_schemas(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self._schemas]

    def user_tool_schemas(self) -> list[dict[str, Any]]:
        """Tools on the user's side (telecom's phone); empty for airline and retail."""
        return [dict(s) for s in self._user_schemas]

    def _fresh(self, reference: str | None = None, solo_mode: bool = False) -> Any:
        # Parsing airline's 7 MB db.json costs ~0.3 s and so does a deep copy; a copy-on-access
        # view of the DB parsed once costs next to nothing (see cow.py).
        db = self.snapshot_db(reference) if snapshots.is_snapshot(reference) else self._db
        kw: dict[str, Any] = {"db": cow_copy(db)}
        if self._user_db is not None:
            kw["user_db"] = cow_copy(self._user_db)
        return self._make(solo_mode=solo_mode, **kw) if solo_mode else self._make(**kw)

    def registry_name(self, task: Task) -> str:
        """The name under which tau²'s registry builds ``task``'s environment (its evaluator
        rebuilds environments by name): the domain's, or for a task on a DB snapshot a name
        registered here whose environments start from that snapshot."""
        ref = task.initial_state.reference
        if not snapshots.is_snapshot(ref):
            return self.name
        name = f"{self.name}@{ref}"
        registry = tau2_module("registry").registry
        with self._lock:
            if name not in registry.get_domains():
                self.snapshot_db(ref)  # fail here, naming the snapshot, not inside tau²'s evaluator
                registry.register_domain(lambda solo_mode=False: self._fresh(ref, solo_mode), name)
        return name

    def snapshot_db(self, reference: str) -> Any:
        """The agent DB of a stored snapshot (``eigen_core.snapshots``), parsed once."""
        with self._lock:
            if reference not in self._snapshots:
                try:
                    db = type(self._db).model_validate(snapshots.parse(reference))
                except ValidationError as e:
                    raise ValueError(f"{reference}: not a tau² {self.name} DB: {e}") from None
                self._snapshots[reference] = db
                while len(self._snapshots) > 8:  # each a whole DB in memory (airline: ~7 MB of JSON)
                    self._snapshots.pop(next(iter(self._snapshots)))
            return self._snapshots[reference]

    def user_system_prompt(self, task: Task) -> str:
        """tau²'s own user-simulator system prompt for ``task``: its global simulation guidelines
        (the tool-using variant where the user has tools) and the scenario as tau² prints it."""
        from eigen_core.domains.tau2.tasks import to_tau2

        sim = tau2_module("user.user_simulator")
        guidelines = sim.get_global_user_sim_guidelines(use_tools=bool(self._user_schemas))
        return sim.SYSTEM_PROMPT.format(
            global_user_sim_guidelines=guidelines, instructions=str(to_tau2(task).user_scenario)
        )

    def pristine(self) -> bool:
        """Whether the shared parsed DBs still hash as when loaded (no environment leaked a
        mutation into them)."""
        return self._hashes() == self._initial_hashes

    def _hashes(self) -> tuple[str, str | None]:
        user = self._user_db.get_hash() if self._user_db is not None else None
        return self._db.get_hash(), user

    def make_env(self, task: Task) -> Tau2Env:
        """A fresh environment in ``task``'s initial state (tau²'s ``set_state`` without
        message history), on the DB snapshot its ``initial_state.reference`` names if any."""
        tasks = tau2_module("data_model.tasks")
        env = self._fresh(task.initial_state.reference)
        init = task.initial_state
        data = None
        if init.data is not None or init.user_data is not None:
            data = tasks.InitializationData(agent_data=init.data, user_data=init.user_data)
        actions = [
            tasks.EnvFunctionCall(env_type=a.requestor, func_name=a.name, arguments=a.arguments)
            for a in init.actions
        ]
        try:
            env.set_state(
                initialization_data=data, initialization_actions=actions or None, message_history=[]
            )
        except Exception as e:
            raise ValueError(f"task {task.id}: tau² could not set its initial state: {e}") from e
        return Tau2Env(env)

    def gold_env(self, task: Task) -> Tau2Env:
        """The environment after the task's gold actions, built as tau²'s evaluator builds it."""
        env = self.make_env(task)
        for a in task.gold_actions:
            env.run_action(a)
        return env


@functools.cache
def tau2_domain(name: str) -> Tau2Domain:
    """The shared ``Tau2Domain`` of ``name`` (building one parses its DB)."""
    return Tau2Domain(name)
