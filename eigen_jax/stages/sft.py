"""SFT of the agent (loss on its turns) or of the user simulator (loss on the user's turns).

Dialogues (``SFTSection.data``) come from the task pool: each task played by the oracle agent
against the scripted user (the same episodes ``selfcheck`` verifies), or its gold actions
replayed on both sides (tau² domains), which gives correct, tool-grounded conversations for every
split; or they are the pool's imported dialogues (the AReaL-SEA SFT rows). The user model trains
on the same dialogues seen from its side, in its domain's context (``rollout.user_sim.user_view``,
``user_context``: tau²'s own user prompt and phone tools there). Train split for training, test
split for the held-out loss.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

from eigen_core.chat_format import ChatFormat
from eigen_core.config import DomainConfig, PoolConfig
from eigen_core.contracts import Dialogue, Task, Trajectory
from eigen_core.dialogues import DialoguePool, dialogue_root
from eigen_core.domain import Domain
from eigen_core.domains import get_domain
from eigen_core.pool import TaskPool
from eigen_core.tokenizer import Tokenizer
from eigen_jax.learner import Learner, make_optimizer
from eigen_jax.objectives import SFTLoss
from eigen_jax.stages.common import StageContext, model_mesh, pad_rows
from eigen_jax.stages.loop import LoopSettings, StageProgram, run_stage
from eigen_jax.train_config import SFTSection
from rollout.agents import OracleAgent
from rollout.config import EpisodeConfig
from rollout.episode import agent_context, run_episode
from rollout.gold_replay import GoldScript, gold_parties
from rollout.user_sim import ScriptedUser, user_context, user_view

Role = Literal["agent", "user"]


async def scripted_dialogues(
    tasks: list[Task], domain_name: str, ep: EpisodeConfig, how: Literal["scripted", "gold"] = "scripted"
) -> list[Trajectory]:
    """Every task played without a model (order kept): the oracle agent against the scripted
    user, or (``gold``) the task's gold actions on both sides."""
    domain = get_domain(domain_name)
    sem = asyncio.Semaphore(ep.concurrency)

    async def one(task: Task) -> Trajectory:
        async with sem:
            if how == "gold":
                agent, user = gold_parties(GoldScript(task))
            else:
                agent, user = OracleAgent(task), ScriptedUser(task.scenario, patience=ep.user_patience)
            return await run_episode(task, domain, agent, user, max_steps=ep.max_steps, prompt=ep.prompt)

    return list(await asyncio.gather(*(one(t) for t in tasks)))


def encode_segments(segments: list[tuple[str, bool]], tok: Tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of rendered pieces and a mask that is 1 on the generated ones."""
    ids: list[int] = []
    mask: list[int] = []
    for text, generated in segments:
        piece = tok.encode(text)
        ids += piece
        mask += [int(generated)] * len(piece)
    return ids, mask


def encode(
    traj: Trajectory,
    task: Task,
    role: Role,
    tok: Tokenizer,
    fmt: ChatFormat,
    tools: list[dict[str, Any]],
    domain: Domain | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered dialogue and a mask that is 1 on the trained role's turns (the
    user's as the user-simulator model sees them in ``domain``: ``user_context``)."""
    if role == "agent":
        return encode_segments(fmt.segments(traj.messages, tools), tok)
    ctx = user_context(domain, task) if domain is not None else None
    view = user_view(task.scenario, traj.messages, ctx)
    return encode_segments(fmt.segments(view, (ctx.tools if ctx else None) or None), tok)


def encode_dialogue(d: Dialogue, tok: Tokenizer, fmt: ChatFormat) -> tuple[list[int], list[int]]:
    """An imported dialogue, the loss on its assistant turns (or on its last message only)."""
    segments = fmt.segments(d.messages, d.tools or None)
    if d.learn == "last":
        last = max(i for i, (_, generated) in enumerate(segments) if generated)
        segments = [(text, generated and i == last) for i, (text, generated) in enumerate(segments)]
    return encode_segments(segments, tok)


def to_arrays(
    examples: list[tuple[list[int], list[int]]], max_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Right-padded [N, max_len] arrays; longer examples are cut at ``max_len``."""
    return pad_rows([{"tokens": ids, "loss_mask": mask} for ids, mask in examples], max_len, pad_id)


class SFT(StageProgram):
    """Shuffled epochs of the pool's scripted dialogues (grain: a stream of row indices, the
    same on every process, its iterator the data position; each process pads only the rows its
    devices hold), the loss on ``role``'s turns, the held-out loss on the test split."""

    def __init__(
        self, ctx: StageContext, scfg: SFTSection, role: Role, data: SFTData, start_from: str | None
    ):
        import grain

        self.scfg, self.role, self.data = scfg, role, data
        model = ctx.base_model(start_from)
        self.loss_fn = SFTLoss(scfg.aggregation)
        self.learner = Learner(
            model,
            make_optimizer(scfg.optim, scfg.steps),
            self.loss_fn,
            micro_batches=scfg.micro_batches,
            mesh=model_mesh(model),
            seed=ctx.run.seed,
        )
        n_train = len(data.splits["train"])
        # as many epochs as the steps need (grain cannot take the length of an endless dataset
        # batched by 1); the order is an endless repeat's
        epochs = scfg.steps * scfg.batch_size // n_train + 2
        batches = (
            grain.MapDataset.range(n_train).shuffle(seed=ctx.run.seed).repeat(epochs).batch(scfg.batch_size)
        )
        self.it = iter(batches)
        self._eval = _eval_fn(self.learner, self.loss_fn)
        self.last_eval: float | None = None

    def step(self) -> dict[str, Any]:
        rows = np.asarray(next(self.it))
        batch = self.learner.feed(len(rows), lambda mine: self.data.rows("train", rows[mine]), trim=128)
        m = self.learner.update(batch, self.loss_fn.denom(batch))
        out = {"loss": m["loss"], "grad_norm": m["grad_norm"], "tokens": m["tokens"]}
        if "balance_loss_sum" in m:  # an MoE model's load-balancing loss (weighted over micro-batches)
            out["balance_loss"] = m["balance_loss_sum"]
        return out

    def evaluate(self) -> dict[str, Any]:
        self.last_eval = self._eval(self.data, self.scfg.batch_size * self.scfg.eval_batches)
        return {"eval_loss": self.last_eval}

    def data_state(self) -> dict[str, Any]:
        return self.it.get_state()

    def restore(self, data: dict[str, Any]) -> None:
        self.it.set_state(data)

    def summary(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "train_dialogues": len(self.data.splits["train"]),
            "test_dialogues": len(self.data.splits["test"]),
            "truncated_dialogues": self.data.truncated,
            "final_eval_loss": self.last_eval,
        }


Example = tuple[list[int], list[int]]
"""A rendered dialogue: token ids and the mask of the trained role's tokens."""


@dataclass
class SFTData:
    """A role's SFT examples per split, unpadded; rows are padded when a batch asks for them."""

    splits: dict[str, list[Example]]
    max_len: int
    """Rows are cut at this many tokens."""
    pad_id: int
    truncated: int
    """Dialogues longer than ``max_len`` (cut)."""

    def rows(self, split: str, index: np.ndarray) -> dict[str, np.ndarray]:
        """[len(index), max_len] ``tokens`` / ``loss_mask`` / ``attn_mask`` of those examples."""
        return to_arrays([self.splits[split][int(i)] for i in index], self.max_len, self.pad_id)


def _examples(stage: str, role: Role, split: str, tok: Tokenizer, *, domain: DomainConfig,
              pool: PoolConfig, ep: EpisodeConfig, data: str) -> list[Example]:  # fmt: skip
    """The ``split``'s dialogues from the ``data`` source, rendered as ``role`` is trained."""
    fmt = ChatFormat()
    if data == "imported":
        if role == "user":
            raise ValueError(
                f"{stage}.data: imported dialogues (the AReaL SFT rows) are agent turns; train the "
                "user model on 'gold' (or 'scripted') dialogues"
            )
        root = dialogue_root(pool.dir)
        dialogues = [d for d in DialoguePool(root).tasks(split) if d.domain == domain.name]
        if not dialogues:
            raise ValueError(
                f"{stage}: the dialogues at {root} have no {domain.name} {split!r} ones (run 'import')"
            )
        return [encode_dialogue(d, tok, fmt) for d in dialogues]
    tasks = list(TaskPool(pool.dir).tasks(split, domain.name))
    if not tasks:
        raise ValueError(
            f"{stage}: the pool at {pool.dir} has no {domain.name} {split!r} tasks "
            "(run 'generate' or 'import')"
        )
    d = get_domain(domain.name)
    _, tools = agent_context(d, ep.prompt)
    trajs = asyncio.run(scripted_dialogues(tasks, domain.name, ep, "gold" if data == "gold" else "scripted"))
    return [encode(tr, t, role, tok, fmt, tools, d) for tr, t in zip(trajs, tasks, strict=True)]


def sft_data(
    stage: str,
    role: Role,
    tok: Tokenizer,
    max_len: int,
    *,
    domain: DomainConfig,
    pool: PoolConfig,
    ep: EpisodeConfig,
    data: str = "scripted",
) -> SFTData:
    """The train and test dialogues of the ``data`` source (``SFTSection.data``), rendered as
    ``role`` is trained on them (``stage`` names the config section in errors)."""
    out, truncated = {}, 0
    for split in ("train", "test"):
        examples = _examples(stage, role, split, tok, domain=domain, pool=pool, ep=ep, data=data)
        truncated += sum(len(ids) > max_len for ids, _ in examples)
        out[split] = examples
        if not any(any(mask[:max_len]) for _, mask in examples):
            longest = max(len(ids) for ids, _ in examples)
            raise ValueError(
                f"{stage}.max_len: {max_len} tokens cut every {split} dialogue before the first "
                f"{role} turn (dialogues run up to {longest} tokens); raise it"
            )
    return SFTData(out, max_len, tok.pad_id, truncated)


def run_sft(
    ctx: StageContext,
    scfg: SFTSection,
    stage: str,
    role: Role,
    *,
    domain: DomainConfig,
    pool: PoolConfig,
    episode: EpisodeConfig,
    resume: bool = False,
    start_from: str | None = None,
) -> dict[str, Any]:
    """The SFT stage ``stage`` (section ``scfg``): ``role`` on the pool's scripted dialogues, from
    ``start_from`` (the pretrain stage's export) or the run's base model."""
    data = sft_data(stage, role, ctx.tok, scfg.max_len, domain=domain, pool=pool, ep=episode, data=scfg.data)
    ls = LoopSettings(scfg.steps, scfg.log_every, ctx.checkpoint, eval_every=scfg.eval_every)
    program = SFT(ctx, scfg, role, data, start_from)
    return run_stage(program, ctx.stage_dir(stage), ctx.tok, ls, resume=resume)


def _eval_fn(learner: Learner, loss_fn: SFTLoss):
    import jax
    from flax import nnx

    @jax.jit
    def sums(params, batch):
        _, s = loss_fn(nnx.merge(learner.graphdef, params), batch, jnp.ones(()))
        return s["nll_sum"], s["tokens"]

    def chunk(data: SFTData, rows: np.ndarray, real: np.ndarray):
        def build(mine: np.ndarray) -> dict[str, np.ndarray]:
            part = data.rows("test", rows[mine])
            part["loss_mask"][~real[mine]] = 0  # repeated rows that fill the last chunk count nothing
            return part

        return build

    def run(data: SFTData, limit: int) -> float:
        """Mean held-out NLL per trained token over the first ``limit`` test dialogues (a fixed
        set, read in chunks of 8 rows: one shape, one compile)."""
        total = count = 0.0
        n = min(limit, len(data.splits["test"]))
        bs = 8
        for i in range(0, n, bs):
            real = min(bs, n - i)
            rows = np.pad(np.arange(i, i + real), (0, bs - real), mode="edge")
            batch = learner.feed(bs, chunk(data, rows, np.arange(bs) < real), trim=128)
            s, c = sums(learner.state.params, batch)
            total, count = total + float(s), count + float(c)
        return total / max(count, 1.0)

    return run
