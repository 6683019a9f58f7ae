"""What the data engine knows about a domain: tools, policy, the DB tasks start from, a sample of
it for prompts, and the entity ids a grounded task may reference.

Shop tasks carry their DB inline, so LLM synthesis grounds them in one shared, seeded world DB
(``synth.procedural.shop.shop_world``); tau² tasks start from the domain's own DB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eigen_core.contracts import InitialState, Task, UserScenario
from eigen_core.domain import Domain
from eigen_core.domains import get_domain

ID_KEY = re.compile(r"(^id$|_id$|_ids$|_number$)")
"""Argument and field names that hold entity ids (``order_id``, ``flight_number``...)."""


def _ids(node: Any, out: set[str], depth: int = 0) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if depth == 1 and isinstance(v, dict):
                out.add(str(k))  # a table keyed by id: {"orders": {"O123": {...}}}
            if ID_KEY.search(str(k)):
                if isinstance(v, str):
                    out.add(v)
                elif isinstance(v, list):
                    out.update(x for x in v if isinstance(x, str))
            _ids(v, out, depth + 1)
    elif isinstance(node, list):
        for v in node:
            _ids(v, out, depth + 1)


def entity_ids(db: dict[str, Any]) -> set[str]:
    """Every id in a DB: keys of its id-keyed tables and values of id-named fields."""
    out: set[str] = set()
    _ids(db, out)
    return out


def referenced_ids(arguments: dict[str, Any]) -> list[tuple[str, str]]:
    """``(argument, id)`` for each id-named argument's value (strings and lists of strings)."""
    refs = []
    for k, v in arguments.items():
        if not ID_KEY.search(k):
            continue
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, str):
                refs.append((k, x))
    return refs


def sample_db(db: dict[str, Any], per_table: int, seed: int = 0) -> dict[str, Any]:
    """``per_table`` records of each id-keyed table (from a seeded offset, so streams see different
    records), plus the records they reference by id, transitively (a customer's orders and their
    products, an order's owner) up to ``10 * per_table`` per table: a sample the model can write
    consistent tasks from."""
    tables = {
        t: rows
        for t, rows in db.items()
        if isinstance(rows, dict) and rows and all(isinstance(v, dict) for v in rows.values())
    }
    out: dict[str, Any] = {t: v for t, v in db.items() if t not in tables}
    picked: dict[str, dict[str, Any]] = {}
    for t, rows in tables.items():
        keys = sorted(rows)
        start = seed % len(keys)
        picked[t] = {k: rows[k] for k in (keys[start:] + keys[:start])[:per_table]}
    # Follow references to a fixpoint (a customer's orders, their products, an order's owner),
    # capped so a densely linked DB (tau² airline) still gives a sample, not the whole DB.
    cap = 10 * per_table
    grew = True
    while grew:
        grew = False
        refs: set[str] = set()
        for rows in picked.values():
            for rec in rows.values():
                refs |= entity_ids({"_": {"_": rec}}) - {"_"}
        for t, rows in tables.items():
            for k in sorted(refs):
                if k in rows and k not in picked[t] and len(picked[t]) < cap:
                    picked[t][k] = rows[k]
                    grew = True
    return {**out, **picked}


@dataclass
class DomainContext:
    """A domain as the data engine sees it."""

    domain: Domain
    initial_state: InitialState
    """Where synthesized tasks start (the shared world DB inline, or the domain's reference DB)."""
    db: dict[str, Any]
    """The agent-side DB that state as JSON."""
    ids: set[str]

    @property
    def name(self) -> str:
        return self.domain.name

    def sample(self, per_table: int, seed: int = 0) -> dict[str, Any]:
        return sample_db(self.db, per_table, seed)

    def brief(self, per_table: int, seed: int = 0) -> dict[str, Any]:
        """The domain as the planner and synthesizer are shown it: name, policy, tool schemas and
        a DB sample."""
        return {
            "name": self.name,
            "policy": self.domain.policy,
            "tools": self.domain.tool_schemas(),
            "db_sample": self.sample(per_table, seed),
        }

    def schemas(self) -> dict[str, dict[str, Any]]:
        """Tool name -> its JSON-schema ``parameters``."""
        return {
            s["function"]["name"]: s["function"].get("parameters", {}) for s in self.domain.tool_schemas()
        }

    def probe_task(self) -> Task:
        return Task(
            id="synth-probe",
            domain=self.name,
            scenario=UserScenario(reason_for_call="probe"),
            initial_state=self.initial_state,
        )


def domain_context(name: str, *, world_seed: int = 0, world_customers: int = 24) -> DomainContext:
    """The ``DomainContext`` of registered domain ``name``."""
    domain = get_domain(name)
    if name == "shop":
        from synth.procedural.shop import shop_world

        init = InitialState(data=shop_world(world_seed, world_customers))
    else:
        init = InitialState()
    probe = Task(
        id="synth-probe", domain=name, scenario=UserScenario(reason_for_call="probe"), initial_state=init
    )
    state = domain.make_env(probe).state()
    db = state["agent"] if set(state) == {"agent", "user"} else state
    return DomainContext(domain=domain, initial_state=init, db=db, ids=entity_ids(db))
