"""tau² tasks ⇄ our ``Task``, losslessly: ``to_tau2(from_tau2(t)) == t`` for every task of the
airline, retail and telecom sets (tested).

Mapping: ``user_scenario`` → ``scenario`` (structured instructions field by field; plain-text
instructions into ``reason_for_call``), ``initial_state`` → ``initial_state`` (agent data patch,
user data patch, initialization actions as ``Action``s with the side as ``requestor``),
``evaluation_criteria`` → ``gold_actions`` / ``required_outputs`` / ``env_assertions`` /
``nl_assertions`` / ``reward_basis``. What we do not use (``description``, ``ticket``, which
criteria were null rather than empty) rides in ``metadata``.
"""

from __future__ import annotations

from typing import Any

from eigen_core.contracts import Action, EnvAssertion, InitialState, Provenance, Task, UserScenario
from eigen_core.domains.tau2._import import tau2_module

DOMAINS = ("airline", "retail", "telecom")
_BASIS = {"DB": "db", "COMMUNICATE": "outputs", "ACTION": "actions", "ENV_ASSERTION": "env_assertions"}
_BASIS_BACK = {v: k for k, v in _BASIS.items()}
_DEFAULT_BASIS = ["DB", "COMMUNICATE"]  # tau²'s EvaluationCriteria default
_NULLABLE = ("actions", "env_assertions", "communicate_info", "nl_assertions")


def task_id(domain: str, tau2_id: str) -> str:
    """Our id of a tau² task: unique across domains in one pool."""
    return f"{domain}:{tau2_id}"


def _scenario(t: Any, domain: str, meta: dict[str, Any]) -> UserScenario:
    ins = t.user_scenario.instructions
    if t.user_scenario.persona == "":
        meta["persona_empty"] = True
    if isinstance(ins, str):
        meta["instructions_text"] = True
        return UserScenario(persona=t.user_scenario.persona or "", reason_for_call=ins)
    if ins.domain != domain:
        meta["instructions_domain"] = ins.domain
    return UserScenario(
        persona=t.user_scenario.persona or "",
        reason_for_call=ins.reason_for_call,
        known_info=ins.known_info if ins.known_info is not None else {},
        unknown_info=ins.unknown_info if ins.unknown_info is not None else [],
        task_instructions=ins.task_instructions,
    )


def _initial_state(t: Any, domain: str, meta: dict[str, Any]) -> InitialState:
    init = InitialState(reference=domain)
    st = t.initial_state
    if st is None:
        return init
    if st.message_history:
        raise ValueError(
            f"tau² task {domain}/{t.id}: initial_state.message_history is not supported yet "
            "(no airline, retail or telecom task uses it)"
        )
    meta["initial_state"] = {
        k: getattr(st, k) is not None
        for k in ("initialization_data", "initialization_actions", "message_history")
    }
    if st.initialization_data is not None:
        init.data = st.initialization_data.agent_data
        init.user_data = st.initialization_data.user_data
    init.actions = [
        Action(requestor=a.env_type, name=a.func_name, arguments=a.arguments)
        for a in st.initialization_actions or []
    ]
    return init


def _criteria(t: Any, domain: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``Task`` fields of tau²'s evaluation criteria."""
    ec = t.evaluation_criteria
    if ec is None:
        meta["no_evaluation_criteria"] = True
        return {}
    meta["null_criteria"] = [k for k in _NULLABLE if getattr(ec, k) is None]
    unknown = [b.value for b in ec.reward_basis if b.value not in _BASIS]
    if unknown:
        # tau²'s own "all" evaluation refuses NL assertions without an LLM judge; so do we.
        raise ValueError(f"tau² task {domain}/{t.id}: reward basis {unknown} needs an LLM judge")
    gold = [
        Action(
            requestor=a.requestor,
            name=a.name,
            arguments=a.arguments,
            compare_args=a.compare_args,
            id=a.action_id,
            info=a.info,
        )
        for a in ec.actions or []
    ]
    asserts = [
        EnvAssertion(
            requestor=a.env_type,
            name=a.func_name,
            arguments=a.arguments,
            assert_value=a.assert_value,
            message=a.message,
        )
        for a in ec.env_assertions or []
    ]
    return dict(
        gold_actions=gold,
        required_outputs=list(ec.communicate_info or []),
        reward_basis=[_BASIS[b.value] for b in ec.reward_basis],
        env_assertions=asserts,
        nl_assertions=list(ec.nl_assertions or []),
    )


def from_tau2(t: Any, domain: str, split: str) -> Task:
    """Convert a ``tau2.data_model.tasks.Task`` (or its JSON dict)."""
    tasks = tau2_module("data_model.tasks")
    if isinstance(t, dict):
        t = tasks.Task.model_validate(t)
    meta: dict[str, Any] = {}
    if t.description is not None:
        meta["description"] = t.description.model_dump(mode="json")
    if t.ticket is not None:
        meta["ticket"] = t.ticket
    scenario = _scenario(t, domain, meta)
    init = _initial_state(t, domain, meta)
    return Task(
        id=task_id(domain, t.id),
        domain=domain,
        split=split,
        scenario=scenario,
        initial_state=init,
        **_criteria(t, domain, meta),
        metadata=meta,
        provenance=Provenance(generator="tau2-bench", params={"tau2_id": t.id}),
    )


def _initial_state_back(task: Task, tasks: Any) -> Any:
    init = task.initial_state
    flags = task.metadata.get("initial_state")
    if flags is None and init.data is None and init.user_data is None and not init.actions:
        return None
    has = flags or {
        "initialization_data": init.data is not None or init.user_data is not None,
        "initialization_actions": bool(init.actions),
        "message_history": False,
    }
    return tasks.InitialState(
        initialization_data=tasks.InitializationData(agent_data=init.data, user_data=init.user_data)
        if has["initialization_data"]
        else None,
        initialization_actions=[
            tasks.EnvFunctionCall(env_type=a.requestor, func_name=a.name, arguments=a.arguments)
            for a in init.actions
        ]
        if has["initialization_actions"]
        else None,
        message_history=[] if has["message_history"] else None,
    )


def _criteria_back(task: Task, tasks: Any) -> Any:
    null = set(task.metadata.get("null_criteria", ()))
    values = {
        "actions": [
            tasks.Action(
                action_id=a.id or f"{a.name}_{i}",
                requestor=a.requestor,
                name=a.name,
                arguments=a.arguments,
                info=a.info,
                compare_args=a.compare_args,
            )
            for i, a in enumerate(task.gold_actions)
        ],
        "env_assertions": [
            tasks.EnvAssertion(
                env_type=a.requestor,
                func_name=a.name,
                arguments=a.arguments,
                assert_value=a.assert_value,
                message=a.message,
            )
            for a in task.env_assertions
        ],
        "communicate_info": list(task.required_outputs),
        "nl_assertions": list(task.nl_assertions),
    }
    kw: dict[str, Any] = {k: (None if k in null and not v else v) for k, v in values.items()}
    basis = task.reward_basis if task.reward_basis is not None else ["db", "outputs"]
    if "checker" in basis:
        raise ValueError(f"task {task.id}: tau² has no equivalent of the 'checker' reward component")
    kw["reward_basis"] = [_BASIS_BACK[b] for b in basis]
    return tasks.EvaluationCriteria(**kw)


def to_tau2(task: Task) -> Any:
    """Our ``Task`` as a ``tau2.data_model.tasks.Task`` (also for synthesized tasks, which carry
    no tau² metadata: then every criterion is written as a list)."""
    tasks = tau2_module("data_model.tasks")
    meta = task.metadata
    sc = task.scenario
    if meta.get("instructions_text"):
        instructions: Any = sc.reason_for_call
    else:
        instructions = tasks.StructuredUserInstructions(
            domain=meta.get("instructions_domain", task.domain),
            reason_for_call=sc.reason_for_call,
            known_info=_text_or_none(sc.known_info),
            unknown_info=_text_or_none(sc.unknown_info),
            task_instructions=sc.task_instructions,
        )
    persona = "" if meta.get("persona_empty") else (sc.persona or None)
    scenario = tasks.UserScenario(persona=persona, instructions=instructions)

    initial_state = _initial_state_back(task, tasks)
    criteria = None if meta.get("no_evaluation_criteria") else _criteria_back(task, tasks)
    description = meta.get("description")
    return tasks.Task(
        id=task.provenance.params.get("tau2_id", task.id),
        description=tasks.Description.model_validate(description) if description is not None else None,
        user_scenario=scenario,
        ticket=meta.get("ticket"),
        initial_state=initial_state,
        evaluation_criteria=criteria,
    )


def _text_or_none(v: dict[str, str] | list[str] | str) -> str | None:
    if isinstance(v, str):
        return v
    if not v:
        return None
    if isinstance(v, dict):
        return "\n".join(f"{k}: {x}" for k, x in v.items())
    return "\n".join(v)


def load_tasks(domain: str, split: str | None = "base") -> list[Task]:
    """The tau² tasks of ``domain`` in ``split`` (``base``, ``train``, ``test``; telecom also
    ``small`` and ``full``; None: every task in the domain's task file)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown tau² domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    registry = tau2_module("registry").registry
    loader = registry.get_tasks_loader(domain)
    try:
        raw = loader(split)
    except ValueError as e:  # tau² names the valid splits
        raise ValueError(f"tau² {domain}: {e}") from None
    return [from_tau2(t, domain, split or "all") for t in raw]


def splits(domain: str) -> list[str]:
    """The split names tau² defines for ``domain``."""
    registry = tau2_module("registry").registry
    get = registry.get_task_splits_loader(domain)
    return sorted(get()) if get is not None else []
