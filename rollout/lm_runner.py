"""Scored LM episodes: the policy (behind an ``InferenceEngine``) against the domain's tools and a
user simulator (scripted, or an LM behind its own engine), scored by a reward function.

The reward function is passed in (``verifiers.reward.Verifier.score`` in practice) so rollout
hosts compose their own verifier; this module only runs and labels episodes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rollout.config import EpisodeConfig
from rollout.contracts import RewardInfo, Task, Trajectory
from rollout.domain import Domain
from rollout.engine import InferenceEngine, SamplingParams
from rollout.episode import run_episode
from rollout.lm_agents import LMAgent, LMUser
from rollout.tokenizer import Tokenizer
from rollout.user_sim import ScriptedUser, UserSimulator

ScoreFn = Callable[[Task, Trajectory], Awaitable[RewardInfo]]


class LMEpisodes:
    """Runs one scored episode per call.

    Args:
        domain: the tool domain.
        engine: serves the policy; ``tokenizer`` is its tokenizer.
        cfg: episode knobs (prompt mode, max steps, turn tokens, max length, who plays the user).
        score: ``(task, trajectory) -> RewardInfo``.
        temperature: the policy's sampling temperature.
        user_engine, user_tokenizer: the user-simulator model when ``cfg.user == "model"``.
    """

    def __init__(
        self,
        domain: Domain,
        engine: InferenceEngine,
        tokenizer: Tokenizer,
        cfg: EpisodeConfig,
        score: ScoreFn,
        *,
        temperature: float = 1.0,
        user_engine: InferenceEngine | None = None,
        user_tokenizer: Tokenizer | None = None,
    ):
        if cfg.user == "model" and (user_engine is None or user_tokenizer is None):
            raise ValueError("episode.user is 'model' but no user-simulator engine was given")
        self.domain, self.engine, self.tok, self.cfg, self.score = domain, engine, tokenizer, cfg, score
        self.temperature = temperature
        self.user_engine, self.user_tok = user_engine, user_tokenizer

    def _user(self, task: Task, seed: int) -> UserSimulator:
        if self.cfg.user == "scripted":
            return ScriptedUser(task.scenario, patience=self.cfg.user_patience)
        assert self.user_engine is not None and self.user_tok is not None
        sp = SamplingParams(
            temperature=self.cfg.user_temperature, max_new_tokens=self.cfg.turn_tokens, seed=seed
        )
        return LMUser(self.user_engine, self.user_tok, task.scenario, sp, self.cfg.max_len)

    async def run(self, task: Task, seed: int, group_id: str = "", sample_index: int = 0) -> Trajectory:
        """One episode of ``task`` (``seed`` fixes the policy's and the user's sampling) with its
        reward."""
        sp = SamplingParams(temperature=self.temperature, max_new_tokens=self.cfg.turn_tokens, seed=seed)
        agent = LMAgent(self.engine, self.tok, sp, self.cfg.max_len)
        traj = await run_episode(
            task,
            self.domain,
            agent,
            self._user(task, seed + 1),
            max_steps=self.cfg.max_steps,
            group_id=group_id,
            sample_index=sample_index,
            prompt=self.cfg.prompt,
        )
        info = await self.score(task, traj)
        return traj.model_copy(update={"reward": info.reward, "reward_info": info})
