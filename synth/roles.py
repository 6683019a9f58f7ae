"""Endpoints per role, from config: clients for planner, synthesizer, judge and reflector, and
factories for the rollout parties (user simulator, assistant).

Roles that name the same URL share one client, so the per-endpoint throttle (concurrency and
rate) holds across roles. ``kind: scripted`` roles talk to one in-process ``ScriptedEndpoint``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from eigen_core.config import EndpointSection
from eigen_core.contracts import Task
from rollout.agents import Agent, OracleAgent
from rollout.chat_agents import ChatAgent, ChatUser
from rollout.user_sim import ScriptedUser, UserSimulator
from synth.config import EndpointsConfig
from synth.llm import Budget, MeteredEngine, RoleClient
from synth.scripted import ScriptedBehaviour, ScriptedEndpoint


@dataclass
class Roles:
    planner: RoleClient | None
    synthesizer: RoleClient | None
    judge: RoleClient | None
    reflector: RoleClient | None
    make_user: Callable[[Task, int], UserSimulator]
    make_agent: Callable[[Task, int], Agent]
    engines: list[MeteredEngine] = field(default_factory=list)
    scripted: ScriptedEndpoint | None = None

    def retries(self) -> int:
        return sum(e.retries for e in self.engines)


def _engine(cfg: EndpointSection, role: str, url: str, budget: Budget) -> MeteredEngine:
    options = cfg.client_options(f"endpoints.{role}.api_key_env")
    return MeteredEngine(url, cfg.model, role=role, budget=budget, **options)


@contextlib.asynccontextmanager
async def open_roles(
    cfg: EndpointsConfig,
    budget: Budget,
    *,
    json_retries: int = 1,
    needed: tuple[str, ...] = ("planner", "synthesizer", "judge", "user", "assistant", "reflector"),
    behaviour: ScriptedBehaviour | None = None,
) -> AsyncIterator[Roles]:
    """Clients for the ``needed`` roles; starts the scripted endpoint if any role uses it."""
    for role in needed:
        getattr(cfg, role).require_kind(f"endpoints.{role}", "endpoint", "scripted", "rules")
        kind = getattr(cfg, role).kind
        if kind == "rules" and role in ("planner", "synthesizer", "reflector"):
            raise ValueError(f"endpoints.{role}.kind: 'rules' has no {role}; use an endpoint or 'scripted'")
    async with contextlib.AsyncExitStack() as stack:
        scripted = None
        if any(getattr(cfg, r).kind == "scripted" for r in needed):
            # Its "no answer in time" attempts outlast the synthesizer's timeout, whatever it is.
            behaviour = behaviour or ScriptedBehaviour(hang_s=cfg.synthesizer.timeout_s + 0.5)
            scripted = await stack.enter_async_context(ScriptedEndpoint(behaviour))
        engines: dict[tuple[str, str], MeteredEngine] = {}

        def engine(role: str) -> MeteredEngine | None:
            c: EndpointSection = getattr(cfg, role)
            if c.kind == "rules" or role not in needed:
                return None
            url = scripted.url if c.kind == "scripted" and scripted else c.url
            # One throttle per endpoint; the budget is charged under each role's own name.
            e = _engine(c, role, url, budget)
            shared = next((x for (u, _), x in engines.items() if u == url), None)
            if shared is not None:
                e._sem, e._throttle = shared._sem, shared._throttle
            engines[(url, role)] = e
            return e

        def client(role: str) -> RoleClient | None:
            e = engine(role)
            c: EndpointSection = getattr(cfg, role)
            return (
                None
                if e is None
                else RoleClient(
                    e,
                    temperature=c.temperature,
                    max_tokens=c.max_tokens,
                    json_retries=json_retries,
                    structured_output=c.structured_output,
                )
            )

        planner, synthesizer = client("planner"), client("synthesizer")
        judge, reflector = client("judge"), client("reflector")
        user_engine, agent_engine = engine("user"), engine("assistant")
        uc, ac = cfg.user, cfg.assistant

        def make_user(task: Task, seed: int) -> UserSimulator:
            if user_engine is None:
                return ScriptedUser(task.scenario)
            return ChatUser(
                user_engine, task.scenario, temperature=uc.temperature, max_tokens=uc.max_tokens, seed=seed
            )

        def make_agent(task: Task, seed: int) -> Agent:
            if agent_engine is None:
                return OracleAgent(task)
            return ChatAgent(agent_engine, temperature=ac.temperature, max_tokens=ac.max_tokens, seed=seed)

        roles = Roles(
            planner, synthesizer, judge, reflector, make_user, make_agent, list(engines.values()), scripted
        )
        try:
            yield roles
        finally:
            for e in engines.values():
                await e.close()
