"""Where GRPO's episodes run, seen from the learner: a ``Rollouts`` runs scored episodes and
takes each update's weights (``sync``), in this process or on rollout servers."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any, Protocol

from eigen_core.config import env_secret
from eigen_core.contracts import Task, Trajectory
from eigen_core.routes import RouteLayout
from eigen_jax.learner import Learner
from eigen_jax.model.hf import save_hf
from eigen_jax.sampler import Sampler
from eigen_jax.train_config import RemoteRolloutsSection
from rollout.http_engine import HTTPEngine
from rollout.remote import RemoteEpisodes
from rollout.version import PolicyVersion
from rollout.workflow import EpisodeWorkflow


class Rollouts(Protocol):
    """Scored episodes for GRPO, and the engines that serve the policy being trained."""

    policy_version: PolicyVersion
    """The one holder of the served policy's version: ``sync`` writes it (by the weight swap),
    the controller and the engines read it."""

    async def run(self, task: Task, seed: int, group_id: str = "", sample_index: int = 0) -> Trajectory:
        """One scored episode (``rollout.workflow.EpisodeWorkflow``)."""
        ...

    async def sync(self, learner: Learner, export_dir: Path) -> None:
        """Serve the learner's current weights as version ``learner.step`` from now on."""
        ...

    def retries(self) -> int:
        """Requests retried so far (0 where there is no network in between)."""
        ...

    def engine_metrics(self) -> dict[str, float]:
        """What the policy's engine reports, for the step's metrics (may be empty)."""
        ...

    async def close(self) -> None: ...


class InProcessRollouts(Rollouts):
    """Episodes in this process on the embedded sampler; weight sync is an in-place swap."""

    def __init__(self, sampler: Sampler, episodes: EpisodeWorkflow):
        self.sampler, self.episodes = sampler, episodes
        self.policy_version = sampler.policy_version

    async def run(self, task: Task, seed: int, group_id: str = "", sample_index: int = 0) -> Trajectory:
        return await self.episodes.run(task, seed, group_id, sample_index)

    async def sync(self, learner: Learner, export_dir: Path) -> None:
        self.sampler.update_weights(learner.state.params, version=learner.step)

    def retries(self) -> int:
        return 0  # no network in between

    def engine_metrics(self) -> dict[str, float]:
        out = {"compiled_programs": float(self.sampler.compiled_programs())}
        store = self.sampler.prefix_cache
        if store is not None:
            # share of prompt tokens not prefilled; bytes held (lockstep cohorts' stores too)
            # within episode.prefix_cache_mb
            out |= {"prefix_hit_rate": store.hit_rate, "prefix_cache_mb": store.total_nbytes / 2**20}
        return out

    async def close(self) -> None:
        pass


class RemoteRollouts(Rollouts):
    """Episodes on rollout servers against an HTTP policy engine; weight sync exports the update
    and has the engine reload it, announcing the version to the rollout servers before the engine
    resumes (so their tokens carry it)."""

    def __init__(
        self,
        r: RemoteRolloutsSection,
        temperature: float,
        tok_dir: Path,
        settings: dict[str, Any],
        routes: RouteLayout | None = None,
    ):
        if not r.agent.url:
            raise ValueError(
                "grpo.remote.servers is set but grpo.remote.agent.url (the policy engine) is not"
            )
        key = env_secret(r.api_key_env, "grpo.remote.api_key_env")
        options = r.agent.client_options("grpo.remote.agent.api_key_env")
        options["api_key"] = options["api_key"] or key
        self.policy_version = PolicyVersion()
        self.remote = RemoteEpisodes(
            r.servers,
            temperature=temperature,
            api_key=key,
            settings=settings,
            policy_version=self.policy_version,
            routes=routes,
        )
        self.engine = HTTPEngine(r.agent.url, r.agent.model, **options, policy_version=self.policy_version)
        self.tok_dir = tok_dir

    async def run(self, task: Task, seed: int, group_id: str = "", sample_index: int = 0) -> Trajectory:
        return await self.remote.run(task, seed, group_id, sample_index)

    async def sync(self, learner: Learner, export_dir: Path) -> None:
        step = learner.step
        target = export_dir / f"v{step}"
        await asyncio.to_thread(save_hf, learner.model(), target, tokenizer_dir=self.tok_dir)
        await self.engine.sync_weights(str(target.resolve()), step, self.remote.announce)
        for old in export_dir.glob("v*"):  # keep the served weights and the previous ones
            if old.name not in (f"v{step}", f"v{step - 1}"):
                shutil.rmtree(old, ignore_errors=True)

    def retries(self) -> int:
        """Requests retried so far: to the policy engine, and episodes rerun on another server."""
        return self.engine.retries + sum(self.remote.failures.values())

    def engine_metrics(self) -> dict[str, float]:
        return {}  # the engine's own metrics endpoint reports them

    async def close(self) -> None:
        await self.remote.close()
        await self.engine.close()


class MirrorRollouts(Rollouts):
    """A learner process other than process 0 in a multi-process GRPO run: process 0 runs every
    episode (on rollout servers) and shares each batch; this process takes part in the update and
    in the collective export of each sync, and talks to no engine."""

    def __init__(self) -> None:
        self.policy_version = PolicyVersion()

    async def run(self, task: Task, seed: int, group_id: str = "", sample_index: int = 0) -> Trajectory:
        raise RuntimeError("episodes run on process 0 only")

    async def sync(self, learner: Learner, export_dir: Path) -> None:
        # save_hf gathers every shard from every process; only process 0 writes
        await asyncio.to_thread(save_hf, learner.model(), export_dir / f"v{learner.step}")

    def retries(self) -> int:
        return 0

    def engine_metrics(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        pass
