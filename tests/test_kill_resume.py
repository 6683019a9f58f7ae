"""kill -9 at random points (twenty times per stage in tools/bench/kills.py; fewer for SFT and
GRPO in CI), each followed by a resume: the task pool and the eval records neither lose nor
duplicate an item, and deterministic runs end exactly where an uninterrupted run ends
(tests/kill_harness.py; crash points in eigen_core.crashpoints)."""

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kill_harness import kill_and_resume, record

from eigen_core.pool import TaskPool

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def _timed(cmd, **kw):
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=900, **kw)
    return time.monotonic() - t0


def _windows(cmd, kills, module=None, **kw):
    """(startup, per-round window): the time to import the command's module, and twice an even
    share of the rest of its run per kill."""
    startup = _timed([sys.executable, "-c", f"import {module or cmd[2]}"], **kw)
    total = _timed(cmd, **kw)
    return startup, 2 * max(total - startup, 0.5) / kills


def _complete_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().split("\n")[:-1]:  # a torn line has no newline after it... or
        try:  # is followed by the next record on a fresh line, and does not parse
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def test_synth_survives_twenty_kills_without_losing_or_duplicating_a_task(tmp_path):
    def cmd(out: Path):
        return [
            sys.executable, "-m", "synth.run", "--config", "configs/synth_shop_scripted.yaml",
            "--no-progress", f"synth.out_dir={out}/run", f"pool.dir={out}/pool", "synth.rounds=2",
            "synth.attempts_per_round=16", "synth.concurrency=2", "pool.shard_size=2",
        ]  # fmt: skip

    startup, window = _windows(cmd(tmp_path / "ref"), 20)
    report = kill_and_resume(
        lambda r: cmd(tmp_path / "killed"), kills=20, seed=0, startup_s=startup, window_s=window,
        cwd=ROOT, points=["pool.before_rename", "pool.before_publish", "synth.torn_line"], max_hit=3,
        log=tmp_path / "killed.log",
    )  # fmt: skip
    assert report.final_returncode == 0 and report.kills == 20, report
    ids = [t.id for t in TaskPool(tmp_path / "killed/pool").tasks()]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(t.id for t in TaskPool(tmp_path / "ref/pool").tasks())
    keys = [r["key"] for r in _complete_lines(tmp_path / "killed/run/journal.jsonl")]
    assert len(set(keys)) == 32 and len(keys) == 32  # each attempt journaled once
    record(
        "synth (2 rounds x 16 attempts)", report, "pool ids = uninterrupted run's; 32 attempts journaled once"
    )


@pytest.fixture
def scripted_endpoint():
    """The synth engine's scripted endpoint (it plays the assistant too), in a thread."""
    from synth.scripted import ScriptedEndpoint

    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()
    box = {}

    async def serve():
        async with ScriptedEndpoint() as ep:
            box["url"] = ep.url
            ready.set()
            await stop.wait()

    th = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    th.start()
    ready.wait(30)
    yield box["url"]
    loop.call_soon_threadsafe(stop.set)
    th.join(10)


def test_an_eval_survives_twenty_kills_with_each_trial_recorded_once(tmp_path, scripted_endpoint):
    from eigen_core.pool import PoolWriter
    from synth.config import ProceduralConfig
    from synth.procedural.shop import generate_shop_task

    pcfg = ProceduralConfig(seed=3, num_tasks=12)
    with PoolWriter(tmp_path / "pool") as w:
        for i in range(12):
            w.add(generate_shop_task(pcfg, i).model_copy(update={"split": "test"}))

    def cmd(out: Path):
        return [
            sys.executable, "-m", "eigen_jax.eval", "--config", "configs/eval_shop.yaml",
            f"run.out_dir={out}", "eval.trials=4", "run.progress=false", "episode.concurrency=2",
            f"pool.dir={tmp_path / 'pool'}", "agent.kind=endpoint", f"agent.url={scripted_endpoint}",
            "agent.model=assistant", "episode.prompt=full",
        ]  # fmt: skip

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    startup, window = _windows(cmd(tmp_path / "ref"), 20, env=env)
    report = kill_and_resume(
        lambda r: cmd(tmp_path / "killed"), kills=20, seed=1, startup_s=startup, window_s=window, cwd=ROOT,
        env=env, points=["eval.torn_line"], max_hit=2, log=tmp_path / "killed.log",
    )  # fmt: skip
    assert report.final_returncode == 0 and report.kills == 20, report
    ref = json.loads((tmp_path / "ref/results.json").read_text())
    got = json.loads((tmp_path / "killed/results.json").read_text())
    assert got["pass_hat_k"] == ref["pass_hat_k"] and got["terminations"] == ref["terminations"]
    trials = [(r["task_id"], r["trial"]) for r in _complete_lines(tmp_path / "killed/trials.jsonl")]
    assert len(trials) == len(set(trials)) == 48  # every trial once: none lost, none run twice
    record("eval (12 tasks x 4 trials, endpoint agent)", report, "pass^k = uninterrupted; 48 trials once")


def test_sft_survives_kills_mid_step_and_mid_checkpoint_and_ends_bit_exact(tmp_path):
    def cmd(out: Path, resume: bool):
        return [
            sys.executable, "-m", "eigen_jax.train", "--config", "configs/quickstart.yaml",
            f"run.out_dir={out}", f"pool.dir={out}/pool", "run.progress=false", "procedural.num_tasks=60",
            "run.stages=[generate,sft_user]", "sft_user.steps=24", "sft_user.eval_every=4",
            "sft_user.max_len=384", "sft_user.eval_batches=1", "checkpoint.every=2",
            *(["--resume"] if resume else []),
        ]  # fmt: skip

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    kills = int(os.environ.get("EIGEN_SFT_KILLS", "5"))  # tools/bench/kills.py runs 20
    startup, window = _windows(cmd(tmp_path / "ref", False), kills, env=env)
    report = kill_and_resume(
        lambda r: cmd(tmp_path / "killed", r > 0), kills=kills, seed=2, startup_s=startup,
        window_s=window, cwd=ROOT, env=env, points=["checkpoint.saving"], max_hit=3,
        log=tmp_path / "killed.log",
    )  # fmt: skip
    assert report.final_returncode == 0 and report.kills == kills, report
    a = [json.loads(x) for x in (tmp_path / "ref/sft_user/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "killed/sft_user/metrics.jsonl").read_text().splitlines()]
    last = {r["step"]: r for r in b}  # a resumed run rewrites the steps after its checkpoint
    assert sorted(last) == [r["step"] for r in a]
    assert all(last[r["step"]]["loss"] == r["loss"] for r in a)
    for f in sorted((tmp_path / "ref/sft_user/hf").glob("*.safetensors")):
        assert f.read_bytes() == (tmp_path / "killed/sft_user/hf" / f.name).read_bytes(), f.name
    record("SFT (24 steps, checkpoint every 2)", report, "losses and exported weights bit-equal")


def _coin_cmd(out: Path, *extra: str, steps: int = 6) -> list[str]:
    """GRPO on episodes with a coin reward (tests/coin_reward.py: a signal from a random agent),
    synchronous (eta 0: what is sampled does not depend on timing), checkpointed every step."""
    args = [
        f"run.out_dir={out}", f"pool.dir={out}/pool", "run.progress=false", "procedural.num_tasks=40",
        "run.stages=[generate,grpo]", "episode.user=scripted", "episode.turn_tokens=24",
        "episode.max_len=512", "episode.max_steps=4", f"grpo.steps={steps}", "grpo.tasks_per_step=2",
        "grpo.group_size=4", "grpo.filter_groups=false", "grpo.episodes.max_staleness=0",
        "checkpoint.every=1", "grpo.heldout.every=null",
    ]  # fmt: skip
    return [sys.executable, "tests/coin_reward.py", "--config", "configs/quickstart.yaml", *args, *extra]


def test_grpo_killed_mid_step_reruns_only_the_groups_in_flight_and_ends_bit_exact(tmp_path):
    """kill -9 at random times (most land inside a step: sampling, update, weight sync), right
    after an update that nothing has saved yet, and inside a checkpoint save; each resume reruns
    exactly the groups its checkpoint had not trained on, token for token as the uninterrupted
    run sampled them, and the run ends on the uninterrupted run's losses and weights."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    kills = int(os.environ.get("EIGEN_GRPO_KILLS", "4"))  # tools/bench/kills.py runs 20
    steps = max(6, kills)  # each round makes some progress: enough steps to outlast the kills
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    startup, window = _windows(_coin_cmd(ref, steps=steps), kills, module="eigen_jax.train", env=env)
    report = kill_and_resume(
        lambda r: _coin_cmd(killed, *(["--resume"] if r else []), steps=steps), kills=kills, seed=3,
        startup_s=startup, window_s=window, cwd=ROOT, env=env,
        points=["grpo.after_update", "checkpoint.saving"], max_hit=5, log=tmp_path / "killed.log",
    )  # fmt: skip
    assert report.final_returncode == 0 and report.kills == kills, report

    a = _complete_lines(ref / "grpo/metrics.jsonl")
    b = {r["step"]: r for r in _complete_lines(killed / "grpo/metrics.jsonl")}  # resumes rewrite
    assert sorted(b) == [r["step"] for r in a] == list(range(1, steps + 1))
    assert all(r["grad_norm"] > 0 for r in a)  # there is a signal to get wrong
    for r in a:
        got = b[r["step"]]
        want = (r["groups"], r["loss"], r["grad_norm"])
        assert (got["groups"], got["loss"], got["grad_norm"]) == want, r["step"]

    want = {r["index"]: r["tokens"] for r in _complete_lines(ref / "grpo/groups.jsonl") if "index" in r}
    log = _complete_lines(killed / "grpo/groups.jsonl")
    starts = [i for i, r in enumerate(log) if "session" in r] + [len(log)]
    assert len(starts) >= 3  # at least two sessions of the GRPO stage: one killed, one resumed
    for s, e in itertools.pairwise(starts):
        session, ran = log[s]["session"], [r["index"] for r in log[s + 1 : e]]
        assert session["next_index"] == 2 * session["step"]  # 2 groups a step, none skipped
        assert all(i >= session["next_index"] for i in ran), (session, ran)  # nothing trained reran
        assert len(ran) == len(set(ran))
    final = log[starts[-2]]["session"]
    assert sorted(r["index"] for r in log[starts[-2] + 1 :]) == list(range(final["next_index"], 2 * steps))
    assert all(r["tokens"] == want[r["index"]] for r in log if "index" in r)
    for f in sorted((ref / "grpo/hf").glob("*.safetensors")):
        assert f.read_bytes() == (killed / "grpo/hf" / f.name).read_bytes(), f.name
    record(
        f"GRPO on episodes ({steps} steps x 2 groups of 4)",
        report,
        "losses, groups rerun and weights bit-equal",
    )
