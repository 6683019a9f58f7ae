"""Task synthesis: the document a synthesizer writes, and the grounding checks that turn it into a
``Task`` or coded rejections (unknown tool, invalid arguments, hallucinated entity).

Grounding runs before anything executes: every gold or forbidden action must name a tool of the
domain with arguments its JSON schema accepts, and every id-named argument (``order_id``,
``flight_number``...) must exist in the DB the task starts from.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import Field

from eigen_core.contracts import Action, Contract, Provenance, Task, UserScenario
from synth.context import DomainContext, referenced_ids
from synth.validate import Rejection


class DraftAction(Contract):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class TaskDraft(Contract):
    """What the synthesizer returns (one JSON object)."""

    scenario: UserScenario
    gold_actions: list[DraftAction] = Field(min_length=1)
    required_outputs: list[str] = Field(default_factory=list)
    forbidden_actions: list[DraftAction] = Field(default_factory=list)
    checker: str = Field(min_length=1)
    """Python source defining ``check(initial_db, final_db, messages)``."""


@functools.lru_cache(maxsize=512)
def _validator(params_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(params_json))


def schema_errors(arguments: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """What is wrong with ``arguments`` under a tool's JSON-schema ``parameters`` (validated by
    ``jsonschema``, nested objects, arrays and ``$ref``s included): missing required keys, keys it
    does not define (our tools refuse those even where the schema does not say so), and each
    value's violations, named by its path."""
    props: dict[str, Any] = params.get("properties", {}) or {}
    errors = [f"missing argument '{k}'" for k in params.get("required", []) if k not in arguments]
    if props or params.get("additionalProperties") is False:
        errors += [f"unexpected argument '{k}'" for k in arguments if k not in props]
    top = {"required", "additionalProperties"}
    found = _validator(json.dumps({"type": "object", **params}, sort_keys=True)).iter_errors(arguments)
    for e in sorted(found, key=lambda e: [str(p) for p in e.absolute_path]):
        if e.absolute_path or e.validator not in top:
            where = ".".join(str(p) for p in e.absolute_path) or "arguments"
            errors.append(f"argument '{where}': {e.message}")
    return errors


def ground(draft: TaskDraft, ctx: DomainContext) -> list[Rejection]:
    """Coded reasons the draft is not grounded in the domain (empty: it is)."""
    schemas = ctx.schemas()
    out: list[Rejection] = []
    for kind, actions in (("gold", draft.gold_actions), ("forbidden", draft.forbidden_actions)):
        for i, a in enumerate(actions):
            where = f"{kind}_actions[{i}] {a.name}"
            if a.name not in schemas:
                out.append(
                    Rejection("unknown_tool", f"{where}: no such tool (have {', '.join(sorted(schemas))})")
                )
                continue
            for e in schema_errors(a.arguments, schemas[a.name]):
                out.append(Rejection("invalid_arguments", f"{where}: {e}"))
            for arg, value in referenced_ids(a.arguments):
                if value not in ctx.ids:
                    out.append(Rejection("hallucinated_entity", f"{where}: {arg}={value!r} is not in the DB"))
    return out


def draft_to_task(draft: TaskDraft, ctx: DomainContext, task_id: str, provenance: Provenance) -> Task:
    """The draft as a ``Task`` starting from the context's initial state."""
    return Task(
        id=task_id,
        domain=ctx.name,
        split="train",
        scenario=draft.scenario,
        initial_state=ctx.initial_state,
        gold_actions=[Action(name=a.name, arguments=a.arguments) for a in draft.gold_actions],
        required_outputs=draft.required_outputs,
        forbidden_actions=[Action(name=a.name, arguments=a.arguments) for a in draft.forbidden_actions],
        checker=draft.checker,
        provenance=provenance,
    )
