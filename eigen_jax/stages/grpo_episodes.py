"""Asynchronous GRPO on multi-turn episodes (``grpo.source: episodes``).

Group ``i`` is G scored episodes of one train task (the policy in the in-process sampler, the user
scripted or the SFT'd user-simulator model, rewards from the verifier). The ``RolloutController``
keeps groups in flight under the staleness bound while the learner updates in a worker thread;
after each update the sampler swaps to the new weights (version = learner step) and the
controller admits the next groups. Checkpoints carry the controller's position, so ``--resume``
reruns the groups that were in flight and nothing else.

Across processes, episodes run on rollout servers: process 0 runs the controller and shares each
batch (``distributed.share``); the others (``MirrorRollouts``) take part in the update and in the
collective export of each sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eigen_apps.eval.passk import pass_hat_ks
from eigen_apps.eval.report import plot_curve
from eigen_apps.eval.trials import run_trials
from eigen_core.config import DomainConfig, PoolConfig
from eigen_core.contracts import Task, Trajectory
from eigen_core.crashpoints import crash_point
from eigen_core.domains import get_domain
from eigen_core.live_tasks import LiveTasks
from eigen_core.pool import TaskPool
from eigen_core.routes import RouteLayout, padded_routes
from eigen_core.storage import atomic_write
from eigen_jax.distributed import is_primary, process_count, share
from eigen_jax.sampler import bucket
from eigen_jax.stages.common import StageContext, episode_engine, pad_rows
from eigen_jax.stages.grpo import GRPOUpdate, advantages
from eigen_jax.stages.loop import LoopSettings, StageProgram, run_stage
from eigen_jax.stages.rollouts import InProcessRollouts, MirrorRollouts, RemoteRollouts, Rollouts
from eigen_jax.train_config import GRPOSection
from rollout import lockstep
from rollout.config import EpisodeConfig, episode_settings
from rollout.controller import RolloutController
from rollout.http_engine import rerun_on_engine_error
from rollout.workflow import lm_episodes
from verifiers.config import VerifierConfig
from verifiers.reward import Verifier, action_credit
from verifiers.sandbox import Sandbox


def episode_seed(run_seed: int, index: int, sample: int) -> int:
    """The seed of sample ``sample`` of group ``index`` (independent streams per episode)."""
    return int(np.random.SeedSequence([run_seed, index, sample]).generate_state(1)[0] % 2**31)


@dataclass
class Group:
    index: int
    task_id: str
    trajectories: list[Trajectory]
    credit: list[float] | None = None  # action_credit per trajectory, when shaping is on

    @property
    def rewards(self) -> np.ndarray:
        """The verifier's binary rewards (what pass rates count)."""
        return np.asarray([t.reward or 0.0 for t in self.trajectories], np.float32)

    def train_rewards(self, weight: float) -> np.ndarray:
        """What advantages and filtering use: the binary reward, where a failure earns
        ``weight`` times its partial credit instead of 0 (``grpo.episodes.action_credit``)."""
        r = self.rewards
        if not weight or self.credit is None:
            return r
        return np.where(r >= 1, r, weight * np.asarray(self.credit, np.float32))


def episode_batch(
    trajs: list[Trajectory], adv: np.ndarray, length: int, pad_id: int
) -> dict[str, np.ndarray]:
    """[len(trajs), length] arrays of the episodes' token transcripts (cut at ``length``), with
    an MoE policy's recorded ``routes`` and ``routes_known`` mask."""
    rows = [
        {"tokens": t.tokens, "loss_mask": t.loss_mask, "behaviour_logp": t.behaviour_logprobs} for t in trajs
    ]
    out = {**pad_rows(rows, length, pad_id), "advantages": np.asarray(adv, np.float32)}
    like = next((t.routes for t in trajs if t.routes is not None), None)
    if like is not None:
        routes, known = padded_routes([t.routes for t in trajs], length, like.layers, like.k)
        out.update(routes=routes, routes_known=known.astype(np.int32))
    return out


class GroupRunner:
    """``run_group`` for the controller, plus what every finished group says (for the metrics).

    Every finished group is also appended to ``record`` (``grpo/groups.jsonl``: index, task,
    rewards, a digest of each episode's tokens), and each start of the stage (first run or
    resume) as ``{"session": ...}``, so what ran, and what a resumed run reran, can be read back."""

    def __init__(
        self,
        tasks: LiveTasks | Sequence[Task],
        episodes: Any,
        group_size: int,
        seed: int,
        write_tools: frozenset[str],
        record: Path,
    ):
        """``tasks[i]``: the task group ``i`` plays (``eigen_core.live_tasks.LiveTasks``)."""
        self.tasks, self.episodes, self.group_size, self.seed = tasks, episodes, group_size, seed
        self.write_tools, self.record = write_tools, record
        # ``episodes.run(task, seed, group_id, sample_index) -> Trajectory`` with the reward
        self.finished: list[Group] = []  # drained by the logger, batch by batch (``settled``)
        self.reruns: list[str] = []  # episodes rerun after an engine failed for good (drained too)

    async def __call__(self, index: int) -> Group:
        task = self.tasks[index]

        def episode(j: int):  # rerun from scratch, same seed, if its engine failed for good
            seed = episode_seed(self.seed, index, j)
            return lockstep.member(
                (index, j),
                lambda: rerun_on_engine_error(
                    lambda: self.episodes.run(task, seed, f"g{index}", j), 3, self.reruns.append
                ),
            )

        trajs = await asyncio.gather(*(episode(j) for j in range(self.group_size)))
        credit = [action_credit(task.gold_actions, t, self.write_tools) for t in trajs]
        group = Group(index, task.id, list(trajs), credit)
        self.finished.append(group)
        digests = [hashlib.sha256(np.asarray(t.tokens, np.int64).tobytes()).hexdigest()[:16] for t in trajs]
        self.note({"index": index, "task_id": task.id, "rewards": group.rewards.tolist(), "tokens": digests})
        return group

    def settled(self, before: int) -> list[Group]:
        """Take the finished groups with an index below ``before`` (those a batch has walked
        past), in index order; later ones wait for their batch."""
        taken = sorted((g for g in self.finished if g.index < before), key=lambda g: g.index)
        self.finished = [g for g in self.finished if g.index >= before]
        return taken

    def note(self, entry: dict[str, Any]) -> None:
        with self.record.open("a") as f:
            f.write(json.dumps(entry) + "\n")


def _keep_fn(g: GRPOSection):
    state = {"in_a_row": 0}
    limit = g.episodes.max_filtered_in_a_row

    def keep(group: Group) -> bool:
        r = group.train_rewards(g.episodes.action_credit)
        informative = not g.filter_groups or bool(r.max() > r.min())
        state["in_a_row"] = 0 if informative else state["in_a_row"] + 1
        if state["in_a_row"] >= limit:
            raise RuntimeError(
                f"dynamic filtering dropped {limit} groups in a row (grpo.episodes.max_filtered_in_a_row): "
                f"every sample of every task got the same reward (last: {r[0]}), so the policy has "
                "no learning signal. Start from a stronger agent (more SFT) or easier tasks."
            )
        return informative

    return keep


def staleness(trajs: list[Trajectory], version: int) -> dict[str, float]:
    """How many versions behind ``version`` (the policy being updated) the trained tokens are."""
    lags = [version - v for t in trajs for v, m in zip(t.versions, t.loss_mask, strict=True) if m]
    return {
        "staleness_mean": float(np.mean(lags)) if lags else 0.0,
        "staleness_max": float(max(lags, default=0)),
    }


def _rollout_metrics(groups: list[Group]) -> dict[str, float]:
    """Metrics over the groups one batch walked past (kept or filtered): the same groups whatever
    the timing, so with a deterministic schedule the metrics are deterministic too."""
    trajs = [t for g in groups for t in g.trajectories]
    if not trajs:
        return {}
    rewards = np.asarray([t.reward or 0.0 for t in trajs])
    ends = Counter(t.termination.value for t in trajs)
    row = {
        "pass_rate": float((rewards >= 1).mean()),
        "reward_mean": float(rewards.mean()),
        "episode_tokens": float(np.mean([len(t.tokens) for t in trajs])),
        "agent_tokens": float(np.mean([sum(t.loss_mask) for t in trajs])),
        "groups_finished": float(len(groups)),
    }
    row.update({f"end_{k}": v / len(trajs) for k, v in ends.items()})
    return row


class EpisodeGRPO(StageProgram):
    """GRPO on scored episodes: rollouts under the staleness bound while the learner updates,
    the engines synced after every update. The data position is the controller's."""

    def __init__(
        self,
        ctx: StageContext,
        g: GRPOSection,
        tasks: Any,
        update: GRPOUpdate,
        policy: Rollouts,
        write_tools: frozenset[str],
        max_len: int,
        confinement: dict[str, Any],
        heldout: Sequence[Task] = (),
        concurrency: int = 32,
    ):
        """``tasks``: the order of the train tasks (``LiveTasks``: group i plays ``tasks[i]``);
        ``write_tools``: the domain's (for action credit); ``max_len``: the longest episode
        transcript (``episode.max_len``), the widest batch; ``heldout``: the learning curve's
        tasks (``grpo.heldout``), run ``concurrency`` episodes at a time."""
        self.g, self.tasks, self.update, self.policy = g, tasks, update, policy
        self.max_len = max_len
        self.learner = update.learner
        self.pad_id, self.rows = ctx.tok.pad_id, g.tasks_per_step * g.group_size
        sd = ctx.stage_dir("grpo")
        self.export_dir = sd.root / "served_weights"
        record = sd.root / "groups.jsonl"
        record.parent.mkdir(parents=True, exist_ok=True)
        self.groups = GroupRunner(tasks, policy, g.group_size, ctx.run.seed, write_tools, record)
        self.keep = _keep_fn(g)
        self.next_index = 0
        self.walked = 0  # groups the batches walked past since the stage began (kept or filtered)
        self.controller: RolloutController[Group] | None = None
        self.passes: list[float] = []
        self.confinement = confinement
        self.heldout, self.concurrency = list(heldout), concurrency
        self.heldout_dir = sd.root / "heldout"
        self.curve: list[dict[str, float]] = []

    def restore(self, data: dict[str, Any]) -> None:
        self.next_index = self.walked = data["controller"]["next_index"]
        if "tasks" in data:  # the order decided so far (a live pool's refreshes included)
            self.tasks.load_state_dict(data["tasks"])
        curve = self.heldout_dir.parent / "heldout.jsonl"
        if curve.exists():  # the points up to the checkpoint; later ones are measured again
            points = [json.loads(x) for x in curve.read_text().splitlines() if x.strip()]
            self.curve = [p for p in points if p["step"] <= self.learner.step]

    def data_state(self) -> dict[str, Any]:
        # process 0 runs the controller; its position (and the task order from there) is what
        # the checkpoint keeps
        if self.controller is None:
            return {}
        state = self.controller.state_dict()
        return {"controller": state, "tasks": self.tasks.state_dict(state["next_index"])}

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        g = self.g
        if is_primary():
            self.groups.note({"session": {"step": self.learner.step, "next_index": self.next_index}})
        try:
            await self.policy.sync(self.learner, self.export_dir)  # serve exactly the learner's weights
            if not is_primary():  # process 0 runs the rollouts and shares each batch (``step``)
                yield
                return
            self.controller = RolloutController(
                self.groups,
                keep=self.keep,
                batch_groups=g.tasks_per_step,
                max_staleness=g.episodes.max_staleness,
                concurrency=g.episodes.groups_in_flight,
                start_index=self.next_index,
                version=self.policy.policy_version,  # at the learner's step now; sync writes it
                deterministic=g.episodes.deterministic,
                members_per_group=g.group_size,
            )
            self.controller.start()
            yield
        finally:
            if self.controller is not None:
                await self.controller.stop()
            await self.policy.close()

    async def step(self) -> dict[str, Any]:
        if not is_primary():
            host = share(None)  # process 0's batch, as it assembled it
            await asyncio.to_thread(self.update, host)
            await self.policy.sync(self.learner, self.export_dir)
            return {}
        g, learner, controller, groups = self.g, self.learner, self.controller, self.groups
        assert controller is not None
        t0 = time.perf_counter()
        batch = await controller.next_batch()
        waited = time.perf_counter() - t0
        trajs = [t for grp in batch for t in grp.trajectories]
        rewards = np.concatenate([grp.rewards for grp in batch])
        shaped = np.concatenate([grp.train_rewards(g.episodes.action_credit) for grp in batch])
        adv, _ = advantages(shaped, g.group_size, g)
        length = min(bucket(max(len(t.tokens) for t in trajs), 256), self.max_len)
        host = share(episode_batch(trajs, adv, length, self.pad_id))  # the same batch on every process
        assert len(trajs) == self.rows
        row: dict[str, Any] = {"groups": [grp.index for grp in batch]}  # what this update trains on
        walked = groups.settled(controller.state_dict()["next_index"])
        row.update(_rollout_metrics(walked), **staleness(trajs, learner.step))
        row.update(
            episodes_rerun=float(len(groups.reruns)), request_retries_total=float(self.policy.retries())
        )
        groups.reruns = []
        row.update(await asyncio.to_thread(self.update, host))
        crash_point("grpo.after_update")  # the learner moved on in memory; nothing of it is saved
        engine = self.policy.engine_metrics()  # before the swap, which empties the prefix cache
        await self.policy.sync(learner, self.export_dir)  # the new version admits the next groups
        elapsed = time.perf_counter() - t0
        self.walked += len(walked)
        row.update(
            batch_pass_rate=float((rewards >= 1).mean()),
            train_reward_mean=float(shaped.mean()),
            filtered_group_frac=1 - self.learner.step * g.tasks_per_step / max(self.walked, 1),
            step_s=elapsed,
            learner_idle_frac=waited / elapsed,
            episodes_per_s=row.get("groups_finished", 0.0) * g.group_size / elapsed,
        )
        row.update(engine)
        if "pass_rate" in row:
            self.passes.append(row["pass_rate"])
        return row

    async def evaluate(self) -> dict[str, Any]:
        """One point of the held-out curve: pass^k of the policy at this step (process 0 runs
        it; records per step under ``grpo/heldout/``, so a resumed run reuses them)."""
        if not is_primary() or not self.heldout:
            return {}
        h, step, pv = self.g.heldout, self.learner.step, self.policy.policy_version
        version = pv.value
        cohorts = (lambda n: lockstep.Cohort(n, pv, version)) if self.g.episodes.deterministic else None
        outcomes = await run_trials(
            self.heldout, self.policy.run, h.trials, h.seed, self.heldout_dir / f"step_{step}.jsonl",
            concurrency=self.concurrency, desc=f"held-out @ step {step}", progress=False,
            settings={"step": step, "version": version}, cohorts=cohorts,
        )  # fmt: skip
        point = {"step": step, **{f"pass^{k}": x for k, x in pass_hat_ks(outcomes).items()}}
        self.curve = [p for p in self.curve if p["step"] != step] + [point]
        lines = "".join(json.dumps(p) + "\n" for p in self.curve)
        atomic_write(self.heldout_dir.parent / "heldout.jsonl", lines.encode())
        title = f"{len(self.heldout)} {h.split} tasks x {h.trials}"
        plot_curve(self.curve, self.heldout_dir.parent / "heldout.png", title)
        return {"heldout_pass1": point["pass^1"]}

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.g.source,
            "max_staleness": self.g.episodes.max_staleness,
            "train_tasks": len(self.tasks),
            "first_pass_rate": self.passes[0] if self.passes else None,
            "last_pass_rate": self.passes[-1] if self.passes else None,
            "sandbox": self.confinement,
            **({"heldout_curve": self.curve} if self.curve else {}),
        }


def episode_rollouts(
    ctx: StageContext,
    g: GRPOSection,
    update: GRPOUpdate,
    *,
    domain: DomainConfig,
    episode: EpisodeConfig,
    verifier: Verifier,
    user_from: str | None,
) -> Rollouts:
    """Where the stage's episodes run: on the rollout servers of ``grpo.remote``, or in this
    process on the learner's model (and the user model from ``user_from``)."""
    tok, ep = ctx.tok, episode
    if process_count() > 1 and not g.remote.servers:
        raise ValueError(
            "grpo on episodes across processes runs its episodes on rollout servers (grpo.remote.servers "
            "and grpo.remote.agent): the in-process sampler would need every process to issue the same "
            "generate calls in the same order. Launch rollout servers, or run with one process"
        )
    if g.episodes.deterministic and g.remote.servers:
        raise ValueError(
            "grpo.episodes.deterministic needs the in-process engines (grpo.remote.servers empty): "
            "remote engines batch requests as they arrive, so their numbers depend on timing"
        )
    if not is_primary():
        return MirrorRollouts()
    if g.remote.servers:
        tok_dir = ctx.stage_dir("grpo").root / "tokenizer"
        tok.save(tok_dir)
        # under replay the servers' policy engine returns the experts of every token (vLLM's format)
        routes = RouteLayout.of(update.learner.model().cfg) if g.routing_replay else None
        settings = episode_settings(domain.name, ep)
        return RemoteRollouts(g.remote, g.temperature, tok_dir, settings, routes)
    # a deterministic cohort runs wholly on its pinned version: at most eta + 1 back
    keep = g.episodes.max_staleness + 2 if g.episodes.deterministic else 1
    model = update.learner.model()
    sampler = episode_engine(
        model, tok.pad_id, ep, keep_versions=keep, record_routes=bool(model.cfg.moe_layers)
    )
    user_engine = episode_engine(ctx.base_model(user_from), tok.pad_id, ep) if ep.user == "model" else None
    episodes = lm_episodes(
        get_domain(domain.name), sampler, tok, ep, verifier.score,
        temperature=g.temperature, user_engine=user_engine, user_tok=tok,
    )  # fmt: skip
    return InProcessRollouts(sampler, episodes)


def run_grpo_episodes(
    ctx: StageContext,
    g: GRPOSection,
    *,
    domain: DomainConfig,
    pool: PoolConfig,
    episode: EpisodeConfig,
    verifier: VerifierConfig,
    resume: bool = False,
    start_from: str | None = None,
    user_from: str | None = None,
) -> dict[str, Any]:
    """GRPO (``g``) on the train tasks of ``pool`` in ``domain``. ``start_from``: the agent to
    start from (an HF export); ``user_from``: the user-simulator model's export (required when
    ``episode.user: model``)."""
    if episode.user == "model" and user_from is None:
        raise ValueError(
            "episode.user is 'model' but the run has no user-simulator model: add the sft_user "
            "stage (before grpo) or set episode.user: scripted"
        )
    # group i plays tasks[i]: epochs of the train split shuffled from run.seed, and the tasks a
    # concurrent synth run publishes, as the pool's manifest lists them at each refresh
    try:
        tasks = LiveTasks(
            pool.dir, "train", seed=ctx.run.seed, limit=g.episodes.max_tasks, domain=domain.name,
            refresh_every=g.episodes.refresh_every * g.tasks_per_step,
        )  # fmt: skip
    except ValueError as e:
        raise ValueError(f"grpo: {e} (run 'generate' or 'import')") from None
    ls = LoopSettings(g.steps, g.log_every, ctx.checkpoint, eval_every=g.heldout.every, eval_first=True)
    d = get_domain(domain.name)
    with Sandbox.from_config(verifier) as sb:
        update = GRPOUpdate(g, ctx.run.seed, ctx.base_model(start_from), g.steps)
        scorer = Verifier(d, sb, verifier.components, basis=g.episodes.reward_basis)
        policy = episode_rollouts(
            ctx, g, update, domain=domain, episode=episode, verifier=scorer, user_from=user_from
        )
        h = g.heldout
        heldout = list(TaskPool(pool.dir).tasks(h.split, domain.name))[: h.max_tasks] if h.every else []
        program = EpisodeGRPO(
            ctx, g, tasks, update, policy, d.write_tools, episode.max_len, sb.describe(),
            heldout=heldout, concurrency=episode.concurrency,
        )  # fmt: skip
        return run_stage(program, ctx.stage_dir("grpo"), ctx.tok, ls, resume=resume)
