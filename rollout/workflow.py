"""The one scored-episode workflow: (task, seed) -> a scored ``Trajectory``.

Every caller that runs episodes for a reward (GRPO, both evals, the rollout server, selfcheck)
builds a ``ScoredEpisodes`` from two *party factories* and a score function, and nothing else:

    workflow = ScoredEpisodes(domain, agent=lm_agent(engine, tok, cfg, temperature),
                              user=user_factory(cfg, user_engine, tok), score=verifier.score,
                              max_steps=cfg.max_steps, prompt=cfg.prompt)
    traj = await workflow.run(task, seed, group_id, sample_index)   # traj.reward is set

A factory makes a fresh party per episode (parties hold the episode's state). The reward is
attached here and only here (``Trajectory.scored``). The score function is passed in so rollout
hosts compose their own verifier; this module only runs and labels episodes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from eigen_core.contracts import RewardInfo, Task, Trajectory
from eigen_core.domain import Domain
from eigen_core.routes import RouteLayout
from eigen_core.tokenizer import Tokenizer
from rollout.agents import Agent
from rollout.config import EpisodeConfig
from rollout.engine import InferenceEngine, SamplingParams
from rollout.episode import run_episode
from rollout.lm_agents import LMAgent, LMUser
from rollout.user_sim import ScriptedUser, UserSimulator, user_context

ScoreFn = Callable[[Task, Trajectory], Awaitable[RewardInfo]]
AgentFactory = Callable[[Task, int], Agent]
"""``(task, episode seed) -> a fresh agent``."""
UserFactory = Callable[[Task, int], UserSimulator]
"""``(task, episode seed) -> a fresh user simulator``."""


@runtime_checkable
class EpisodeWorkflow(Protocol):
    """Turns (task, seed) into one scored trajectory. In-process (``ScoredEpisodes``) or on a
    rollout server (``rollout.remote.RemoteEpisodes``): callers cannot tell them apart."""

    async def run(self, task: Task, seed: int, group_id: str = "", sample_index: int = 0) -> Trajectory:
        """One episode of ``task``; ``seed`` fixes every party's sampling; the reward is set."""
        ...


class ScoredEpisodes:
    """``EpisodeWorkflow`` in this process: build the parties, run the episode, score it.

    Args:
        domain: the tool domain.
        agent, user: party factories (see ``lm_agent``, ``user_factory``, ``rollout.chat_agents``).
        score: ``(task, trajectory) -> RewardInfo``.
        max_steps, prompt: the episode limits (``EpisodeConfig``'s).
    """

    def __init__(
        self,
        domain: Domain,
        *,
        agent: AgentFactory,
        user: UserFactory,
        score: ScoreFn,
        max_steps: int = 50,
        prompt: str = "full",
    ):
        self.domain, self.agent, self.user, self.score = domain, agent, user, score
        self.max_steps, self.prompt = max_steps, prompt

    async def run(self, task: Task, seed: int, group_id: str = "", sample_index: int = 0) -> Trajectory:
        traj = await run_episode(
            task,
            self.domain,
            self.agent(task, seed),
            self.user(task, seed),
            max_steps=self.max_steps,
            group_id=group_id,
            sample_index=sample_index,
            prompt=self.prompt,
        )
        return traj.scored(await self.score(task, traj))


def lm_agent(
    engine: InferenceEngine,
    tok: Tokenizer,
    cfg: EpisodeConfig,
    temperature: float,
    routes: RouteLayout | None = None,
) -> AgentFactory:
    """The token-level policy (``LMAgent``) on ``engine``, seeded by the episode seed; ``routes``:
    an MoE policy's layout, to have the engine return its routes (``SamplingParams.routes``)."""

    def make(task: Task, seed: int) -> Agent:
        sp = SamplingParams(temperature=temperature, max_new_tokens=cfg.turn_tokens, seed=seed, routes=routes)
        return LMAgent(engine, tok, sp, cfg.max_len)

    return make


def scripted_user(patience: int = 3) -> UserFactory:
    """The scripted customer (``ScriptedUser``), driven by the task's scenario."""
    return lambda task, seed: ScriptedUser(task.scenario, patience=patience)


def user_factory(
    cfg: EpisodeConfig,
    engine: InferenceEngine | None = None,
    tok: Tokenizer | None = None,
    domain: Domain | None = None,
) -> UserFactory:
    """Who plays the customer under ``cfg.user``: the scripted simulator, or the user-simulator
    model on ``engine`` (its sampling seeded by episode seed + 1, apart from the agent's), given
    ``domain``'s user context (``rollout.user_sim.user_context``: tau²'s prompt and phone tools)."""
    if cfg.user == "scripted":
        return scripted_user(cfg.user_patience)
    if engine is None or tok is None:
        raise ValueError("episode.user is 'model' but no user-simulator engine was given")

    def make(task: Task, seed: int) -> UserSimulator:
        sp = SamplingParams(temperature=cfg.user_temperature, max_new_tokens=cfg.turn_tokens, seed=seed + 1)
        ctx = user_context(domain, task) if domain is not None else None
        return LMUser(engine, tok, task.scenario, sp, cfg.max_len, context=ctx)

    return make


def lm_episodes(
    domain: Domain,
    engine: InferenceEngine,
    tok: Tokenizer,
    cfg: EpisodeConfig,
    score: ScoreFn,
    *,
    temperature: float,
    user_engine: InferenceEngine | None = None,
    user_tok: Tokenizer | None = None,
    routes: RouteLayout | None = None,
) -> ScoredEpisodes:
    """The workflow of LM episodes (GRPO, the train-time eval, the rollout server): the policy on
    ``engine``, the user under ``cfg.user``, the limits of ``cfg``; ``routes``: see ``lm_agent``."""
    return ScoredEpisodes(
        domain,
        agent=lm_agent(engine, tok, cfg, temperature, routes),
        user=user_factory(cfg, user_engine, user_tok, domain),
        score=score,
        max_steps=cfg.max_steps,
        prompt=cfg.prompt,
    )
