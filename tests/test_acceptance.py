"""The foundation's acceptance, through the real commands: 1,000 procedural tasks, then the
model-free self-check over all of them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eigen_core.pool import TaskPool

ROOT = Path(__file__).parents[1]


def _proc(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT)


def _cli(*args):
    out = _proc(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _generate_and_check(tmp_path, config, n):
    pool = tmp_path / "pool"
    gen = _cli(
        "synth.procedural", "--config", config, "--num-tasks", str(n), "--out", str(pool), "--no-progress"
    )
    assert gen["accepted"] == n and gen["rejected"] == 0, gen
    assert len(TaskPool(pool)) == n
    check = _cli("eigen_apps.selfcheck", "--config", config, "--pool", str(pool), "--no-progress")
    assert check["tasks"] == n
    return gen, check


def test_thousand_tasks_oracle_idle_perturbed(tmp_path):
    gen, check = _generate_and_check(tmp_path, "configs/quickstart.yaml", 1000)
    assert check["oracle_pass"] >= 0.99, check["failures"]
    assert check["perturbed_pass"] <= 0.01, check["failures"]
    assert check["perturbed_tasks"] == 1000
    # The do-nothing floor is exactly the share of tasks where the right outcome is no change.
    assert check["idle_pass"] == check["no_change_share"] == round(gen["no_change"] / 1000, 4)
    assert 0.02 < check["idle_pass"] < 0.5
    assert gen["splits"]["test"] > 100 and gen["splits"]["train"] > 600

    # Killed and restarted: a rerun adds nothing, and extending the stream keeps earlier tasks.
    again = _cli(
        "synth.procedural",
        "--config",
        "configs/quickstart.yaml",
        "--num-tasks",
        "1010",
        "--out",
        str(tmp_path / "pool"),
        "--no-progress",
    )
    assert again["already_in_pool"] == 1000 and again["accepted"] == 10


@pytest.mark.slow
def test_hard_config_thousand_tasks(tmp_path):
    _, check = _generate_and_check(tmp_path, "configs/procedural_hard.yaml", 1000)
    assert check["oracle_pass"] >= 0.99 and check["perturbed_pass"] <= 0.01
    assert check["idle_pass"] == check["no_change_share"]


def test_train_entry_point_runs_stages_and_writes_summary(tmp_path):
    out = _proc(
        "eigen_jax.train",
        "--config",
        "configs/quickstart.yaml",
        f"run.out_dir={tmp_path}",
        f"pool.dir={tmp_path / 'pool'}",
        "procedural.num_tasks=60",
        "run.progress=false",
        "run.stages=[generate,selfcheck]",  # the learner stages: tests/test_train_stages.py
    )
    assert out.returncode == 0, out.stderr
    assert "oracle" in out.stdout and "summary written" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["generate"]["accepted"] == 60 and summary["selfcheck"]["oracle_pass"] == 1.0
    assert (tmp_path / "config.yaml").exists()


def test_train_rejects_bad_config_naming_the_key(tmp_path):
    out = _proc("eigen_jax.train", "--config", "configs/quickstart.yaml", "procedural.num_taks=3")
    assert out.returncode == 2
    assert "procedural.num_taks: unknown key" in out.stderr and "num_tasks" in out.stderr


def test_print_config_is_complete_and_loadable(tmp_path):
    out = _proc(
        "eigen_jax.train", "--config", "configs/quickstart.yaml", "--print-config", "episode.max_steps=9"
    )
    assert out.returncode == 0, out.stderr
    (tmp_path / "resolved.yaml").write_text(out.stdout)
    from eigen_core.configio import load_config
    from eigen_jax.config import RunConfig

    cfg = load_config(RunConfig, tmp_path / "resolved.yaml")
    assert cfg.episode.max_steps == 9 and cfg.verifier.sandbox_workers == 2


def test_selfcheck_writes_scored_trajectories(tmp_path):
    pool = tmp_path / "pool"
    _cli("synth.procedural", "--num-tasks", "5", "--out", str(pool), "--no-progress")
    out = tmp_path / "traj.jsonl"
    check = _cli("eigen_apps.selfcheck", "--pool", str(pool), "--trajectories", str(out), "--no-progress")
    from eigen_core.contracts import Trajectory

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 15 and {r["agent"] for r in rows} == {"oracle", "idle", "perturbed"}
    for r in rows:
        traj = Trajectory.model_validate(r["trajectory"])
        assert traj.reward == traj.reward_info.reward
        expected = {"oracle": 1.0, "perturbed": 0.0}.get(r["agent"], traj.reward_info.components["db"])
        assert traj.reward == expected, r["agent"]
    assert check["oracle_pass"] == 1.0
    missing = _proc("eigen_apps.selfcheck", "--pool", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no manifest.json" in missing.stderr


def test_quickstart_stage_list_runs_end_to_end_in_miniature(tmp_path):
    """Every stage of configs/quickstart.yaml, shrunk: the SFT'd user model plays the customer in
    GRPO and eval, and the eval covers the base, SFT and RL agents (CI runs the full quickstart)."""
    out = _proc(
        "eigen_jax.train",
        "--config",
        "configs/quickstart.yaml",
        f"run.out_dir={tmp_path}",
        f"pool.dir={tmp_path / 'pool'}",
        "run.progress=false",
        "procedural.num_tasks=40",
        "pretrain.steps=2",
        "pretrain.copy_only_steps=1",
        "pretrain.batch_size=8",
        "pretrain.seq_len=32",
        "pretrain.eval_every=2",
        "sft_user.steps=2",
        "sft_agent.steps=2",
        "sft_agent.eval_batches=1",
        "sft_user.eval_batches=1",
        "grpo.steps=2",
        "grpo.tasks_per_step=2",
        "grpo.group_size=2",
        "grpo.filter_groups=false",  # a 2-step SFT agent never succeeds: every group is all-0
        "episode.turn_tokens=12",
        "episode.max_steps=3",
        "episode.max_len=768",
        "eval.max_tasks=2",
        "eval.trials=2",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == [
        "generate",
        "selfcheck",
        "pretrain",
        "sft_user",
        "sft_agent",
        "grpo",
        "eval",
        "stage_seconds",  # wall-clock per stage, and the total
    ]
    times = summary["stage_seconds"]
    assert list(times) == [*list(summary)[:-1], "total"] and times["total"] >= times["grpo"] > 0
    assert summary["grpo"]["source"] == "episodes" and summary["eval"]["user"] == "model"
    assert set(summary["eval"]["pass_hat_k"]) == {"base", "sft", "rl"}
    assert set(summary["eval"]["rl_minus_sft"]) == {"pass1", "paired_se"}
    assert "pass^2" in out.stdout and (tmp_path / "eval/passk.png").exists()
    assert "stage times:" in out.stdout and "rl - sft pass^1" in out.stdout
    curve = summary["grpo"]["heldout_curve"]  # the quickstart's learning curve: step 0 and the last
    assert [p["step"] for p in curve] == [0, 2] and (tmp_path / "grpo/heldout.png").exists()
