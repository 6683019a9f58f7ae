"""``python -m eigen_jax.train --config configs/X.yaml [key.path=value ...]``

The composition root: runs the stages the config lists, in order, and writes a summary to
``run.out_dir``. Stages: ``import`` (tau² tasks and the AReaL-SEA RL data into the pool),
``generate`` (procedural tasks into the pool), ``selfcheck`` (model-free
episodes through the verifier), ``sft_user`` / ``sft_agent`` (SFT of the user-simulator model and
of the agent on the pool's dialogues), ``grpo`` (from the SFT agent when the run has one).

``--resume`` continues an interrupted run: finished stages are skipped, the running one restarts
from its latest checkpoint (params, optimiser, step, RNG, data position) and goes on exactly as
the uninterrupted run would have.

On several hosts every host runs this same command (``distributed`` section, see
``eigen_jax.distributed``): the learner stages run on all processes over one global mesh; the
stages that write the task pool or only read it (generate, selfcheck) run on process 0 while the
others wait.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eigen_core.configio import add_config_args, config_from_args, dump_config
from eigen_core.pool import TaskPool
from eigen_jax import distributed as dist
from eigen_jax.config import RunConfig

if TYPE_CHECKING:  # the learner stages import JAX; generate and selfcheck do not need it
    from eigen_jax.stages.common import StageContext


def _stage_import(cfg: RunConfig) -> dict[str, Any]:
    from synth.importer import import_to_pool

    return import_to_pool(cfg.imports, cfg.pool, progress=cfg.run.progress).as_dict()


def _stage_generate(cfg: RunConfig) -> dict[str, Any]:
    from synth.procedural import generate_to_pool

    report = generate_to_pool(
        cfg.domain.name, cfg.procedural, cfg.pool, cfg.verifier, progress=cfg.run.progress
    )
    return report.as_dict()


def _stage_selfcheck(cfg: RunConfig) -> dict[str, Any]:
    from eigen_apps.selfcheck import SelfcheckConfig, selfcheck

    tasks = list(TaskPool(cfg.pool.dir).tasks(domain=cfg.domain.name))
    sc = SelfcheckConfig(episode=cfg.episode, verifier=cfg.verifier)
    return asyncio.run(selfcheck(tasks, sc, progress=cfg.run.progress))


def stage_context(cfg: RunConfig) -> StageContext:
    """What the learner stages share: the run and model sections, checkpointing, the tokenizer
    (a ``small`` one is trained on the domain and pool once and kept in ``run.out_dir``)."""
    from eigen_jax.stages.common import StageContext, corpus, tokenizer

    tok = tokenizer(cfg.model, cfg.run.out_dir, lambda: corpus(cfg.domain, cfg.pool))
    return StageContext(cfg.run, cfg.model, cfg.checkpoint, tok)


def _stage_pretrain(cfg: RunConfig, resume: bool) -> dict[str, Any]:
    from eigen_jax.stages.pretrain import run_pretrain

    return run_pretrain(stage_context(cfg), cfg.pretrain, domain=cfg.domain, pool=cfg.pool, resume=resume)


def _stage_sft(cfg: RunConfig, stage: str, resume: bool) -> dict[str, Any]:
    from eigen_jax.stages.sft import run_sft

    return run_sft(
        stage_context(cfg),
        getattr(cfg, stage),
        stage,
        "user" if stage == "sft_user" else "agent",
        domain=cfg.domain,
        pool=cfg.pool,
        episode=cfg.episode,
        resume=resume,
        start_from=_export_of(cfg, "pretrain"),
    )


def _export_of(cfg: RunConfig, stage: str) -> str | None:
    """The HF export of ``stage`` when this run lists it and it has finished."""
    from eigen_jax.stages.stage_dir import StageDir

    sd = StageDir(cfg.run.out_dir, stage)
    return str(sd.hf) if stage in cfg.run.stages and sd.finished() else None


def _stage_grpo(cfg: RunConfig, resume: bool) -> dict[str, Any]:
    start = _export_of(cfg, "sft_agent")
    if cfg.grpo.source == "toy":
        from eigen_jax.stages.grpo import run_grpo

        return run_grpo(stage_context(cfg), cfg.grpo, resume=resume, start_from=start)
    from eigen_jax.stages.grpo_episodes import run_grpo_episodes

    return run_grpo_episodes(
        stage_context(cfg),
        cfg.grpo,
        domain=cfg.domain,
        pool=cfg.pool,
        episode=cfg.episode,
        verifier=cfg.verifier,
        resume=resume,
        start_from=start,
        user_from=_export_of(cfg, "sft_user"),
    )


def _stage_eval(cfg: RunConfig, resume: bool) -> dict[str, Any]:
    from eigen_jax.stages.evaluate import run_eval

    return run_eval(
        stage_context(cfg),
        cfg.eval,
        domain=cfg.domain,
        pool=cfg.pool,
        episode=cfg.episode,
        verifier=cfg.verifier,
        user_from=_export_of(cfg, "sft_user"),
        base_from=_export_of(cfg, "pretrain"),
    )


STAGES = {
    "import": lambda cfg, resume: _stage_import(cfg),
    "generate": lambda cfg, resume: _stage_generate(cfg),
    "selfcheck": lambda cfg, resume: _stage_selfcheck(cfg),
    "pretrain": _stage_pretrain,
    "sft_user": lambda cfg, resume: _stage_sft(cfg, "sft_user", resume),
    "sft_agent": lambda cfg, resume: _stage_sft(cfg, "sft_agent", resume),
    "grpo": _stage_grpo,
    "eval": _stage_eval,
}


LEARNER_STAGES = ("pretrain", "sft_user", "sft_agent", "grpo")
"""Stages that run on the stage loop (``eigen_jax.stages.loop``) and mark themselves done."""

PRIMARY_STAGES = ("import", "generate", "selfcheck")
"""Stages that run on process 0 alone when there are several (the others wait for them)."""


def multi_process_gaps(cfg: RunConfig) -> list[str]:
    """What this run asks of several processes that is not built yet (each names its way out)."""
    gaps = []
    if "grpo" in cfg.run.stages and cfg.grpo.source == "episodes" and not cfg.grpo.remote.servers:
        gaps.append(
            "grpo on episodes across processes runs its episodes on rollout servers (set "
            "grpo.remote.servers and grpo.remote.agent): the in-process sampler would need every "
            "process to issue the same generate calls in the same order"
        )
    if "eval" in cfg.run.stages:
        gaps.append(
            "the eval stage runs on one process: run it separately (run.stages=[eval]) without distributed"
        )
    return gaps


def _run_stage(cfg: RunConfig, stage: str, resume: bool) -> dict[str, Any]:
    if stage in PRIMARY_STAGES and dist.process_count() > 1:
        with dist.primary_first(f"stage {stage}") as mine:
            return STAGES[stage](cfg, resume) if mine else {"ran_on_process": 0}
    return STAGES[stage](cfg, resume)


def run(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Run every configured stage; returns (and writes) ``{stage: summary}``. With ``resume``,
    a learner stage that finished is not rerun (its summary is read back)."""
    from eigen_jax.stages.stage_dir import StageDir

    if dist.process_count() > 1 and (gaps := multi_process_gaps(cfg)):
        raise ValueError("; ".join(gaps))
    primary, out = dist.is_primary(), Path(cfg.run.out_dir)
    if primary:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))
    summary: dict[str, Any] = {}
    seconds: dict[str, float] = {}  # wall-clock per stage: summary["stage_seconds"], not a stage
    for stage in cfg.run.stages:
        t0 = time.perf_counter()
        if primary:
            print(f"[{cfg.run.name}] stage {stage} ...", file=sys.stderr, flush=True)
        done = StageDir(cfg.run.out_dir, stage).finished() if resume and stage in LEARNER_STAGES else None
        if dist.agree(done is not None):  # process 0 wrote the done markers: its view decides
            summary[stage] = done or {"finished": True}
        else:
            summary[stage] = _run_stage(cfg, stage, resume)
        seconds[stage] = round(time.perf_counter() - t0, 1)
        if primary:
            print(f"[{cfg.run.name}] stage {stage} done in {seconds[stage]:.1f}s", file=sys.stderr)
            (out / "summary.json").write_text(json.dumps(_timed(summary, seconds), indent=2))
    return _timed(summary, seconds)


def _timed(summary: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """``summary`` with each stage's wall-clock seconds and their total (``stage_seconds``)."""
    return {**summary, "stage_seconds": {**seconds, "total": round(sum(seconds.values()), 1)}}


def _print_table(summary: dict[str, Any]) -> None:
    if "import" in summary:
        s = summary["import"]
        print(
            f"import: {s['imported']} tasks imported of {s['rows']} rows ({s['already_in_pool']} already "
            f"in pool, {s['duplicates']} duplicates, {s['dropped']} dropped, {s['skipped']} skipped, "
            f"{s['gold_errors']} with a gold action that errors; {s['seconds']}s)"
        )
    if "generate" in summary:
        g = summary["generate"]
        print(
            f"tasks: {g['accepted']} accepted, {g['rejected']} rejected, "
            f"{g['already_in_pool']} already in pool (splits {g['splits']}; {g['seconds']}s)"
        )
    if "selfcheck" in summary:
        s = summary["selfcheck"]
        print(f"{'agent':<10} {'pass rate':>9}")
        for agent in ("oracle", "idle", "perturbed"):
            print(f"{agent:<10} {s[agent + '_pass']:>9.3f}")
        print(f"share of tasks whose correct outcome changes nothing: {s['no_change_share']:.3f}")
    if "pretrain" in summary:
        s = summary["pretrain"]
        print(
            f"pretrain: {s['steps']} steps, held-out copy accuracy {s['copy_accuracy']:.3f}, "
            f"text loss {s['held_out_text_nll']:.3f} -> {s['hf_dir']}"
        )
    for stage in ("sft_user", "sft_agent"):
        if stage in summary:
            s = summary[stage]
            print(f"{stage}: {s['steps']} steps, held-out loss {s['final_eval_loss']:.3f} -> {s['hf_dir']}")
    if "grpo" in summary:
        s = summary["grpo"]
        print(f"grpo ({s['source']}): pass rate {s['first_pass_rate']:.3f} -> {s['last_pass_rate']:.3f}")
    if "eval" in summary:
        from eigen_apps.eval.report import passk_table

        e = summary["eval"]
        pk = {a: {int(k): x for k, x in r.items()} for a, r in e["pass_hat_k"].items()}
        print(f"eval: {e['tasks']} {e['split']} tasks x {e['trials']} trials (user: {e['user']})")
        print(passk_table(pk))
        if d := e.get("rl_minus_sft"):
            print(f"rl - sft pass^1: {d['pass1']:+.3f} (paired standard error {d['paired_se']:.3f})")
        print(f"eval results: {e['results_json']}, plot: {e['plot']}")
    if times := summary.get("stage_seconds"):
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in times.items() if k != "total")
        print(f"stage times: {parts}; total {times['total'] / 60:.1f} min")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eigen_jax.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its latest checkpoints"
    )
    args = parser.parse_args(argv)
    cfg = config_from_args(RunConfig, args, foreign_sections=())
    dist.initialize(cfg.distributed)  # before anything touches a device
    summary = run(cfg, resume=args.resume)
    if dist.is_primary():
        _print_table(summary)
        print(f"summary written to {Path(cfg.run.out_dir) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
