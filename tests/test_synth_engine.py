"""The data engine's rounds: yield rises under reflection (scripted endpoint), kill and resume,
budget caps, lost pool shards re-published, the procedural curriculum, the CLI and its configs."""

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eigen_core.configio import load_config
from eigen_core.domains import get_domain
from eigen_core.pool import TaskPool
from rollout.agents import OracleAgent
from synth.run import SynthRunConfig, run_synth
from synth.seeding import hash_int
from verifiers.perturb import drop_last_write

ROOT = Path(__file__).parents[1]
SCRIPTED = ROOT / "configs/synth_shop_scripted.yaml"


def _cfg(tmp_path, *overrides, path=SCRIPTED):
    return load_config(
        SynthRunConfig,
        path,
        [f"synth.out_dir={tmp_path}/run", f"pool.dir={tmp_path}/pool", "synth.progress=false", *overrides],
    )


def _cli(tmp_path, *overrides):
    """``python -m synth.run`` on the scripted config, writing under ``tmp_path``."""
    return [
        sys.executable, "-m", "synth.run", "--config", str(SCRIPTED), "--no-progress",
        f"synth.out_dir={tmp_path}/run", f"pool.dir={tmp_path}/pool", *overrides,
    ]  # fmt: skip


def _pool_ids(tmp_path):
    return [t.id for t in TaskPool(tmp_path / "pool").tasks()]


def _journal(tmp_path):
    return [json.loads(x) for x in (tmp_path / "run/journal.jsonl").read_text().splitlines()]


def test_yield_rises_over_reflection_rounds_and_lineage_says_why(tmp_path):
    report = asyncio.run(run_synth(_cfg(tmp_path)))
    from synth.scripted import FIXES

    ys = [r["yield"] for r in report["rounds"]]
    assert len(ys) == 4 and ys[-1] > ys[0] + 0.1, ys
    fixable = [sum(n for c, n in r["rejections"].items() if c in FIXES) for r in report["rounds"]]
    assert fixable[-1] * 2 < fixable[0], fixable  # what reflection fixed, not dedupe's share
    first = report["rounds"][0]
    assert first["proposed"] == 24 and sum(first["rejections"].values()) >= 24 - first["accepted"]
    assert {"invalid_arguments", "malformed_output"} & set(first["rejections"])
    assert all(r["calls"] > 0 and r["tokens"] > 0 for r in report["rounds"])
    # Every plan version is in the lineage with its prompts and the reflector's reason.
    lineage = [json.loads(x) for x in (tmp_path / "run/lineage.jsonl").read_text().splitlines()]
    assert {(e["id"], e["version"]) for e in lineage} >= {("p0", 0), ("p0", 1), ("p2", 3)}
    later = [e for e in lineage if e["version"] > 0]
    assert all("added a guideline" in e["rationale"] or "no fixable" in e["rationale"] for e in later)
    assert any(e["prompts"]["synthesizer"] for e in later)
    # Accepted tasks are in the pool, once each, and the report and plot exist.
    ids = _pool_ids(tmp_path)
    assert len(ids) == len(set(ids)) == report["accepted"]
    assert (tmp_path / "run/report.png").stat().st_size > 0
    md = (tmp_path / "run/report.md").read_text()
    assert f"## Round 3: yield {ys[3]}" in md and "| p0 | 3 |" in md
    assert json.loads((tmp_path / "run/report.json").read_text())["accepted"] == report["accepted"]


def test_killed_and_restarted_it_neither_duplicates_nor_loses_tasks(tmp_path):
    over = ["synth.concurrency=1", "synth.rounds=2", "synth.attempts_per_round=16"]
    ref = asyncio.run(run_synth(_cfg(tmp_path / "ref", *over)))
    cmd = _cli(tmp_path, *over)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = tmp_path / "run/journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(journal.read_text().splitlines())
    assert 10 <= killed_at < 32
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    keys = [r["key"] for r in _journal(tmp_path)]
    assert len(keys) == len(set(keys)) == 32
    ids = _pool_ids(tmp_path)
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(_pool_ids(tmp_path / "ref")) and len(ids) == ref["accepted"]


def test_budget_cap_stops_cleanly_and_a_rerun_with_more_budget_continues(tmp_path):
    report = asyncio.run(run_synth(_cfg(tmp_path, "synth.max_calls=60", "synth.rounds=2")))
    assert report["stopped"] and "call budget" in report["stopped"]
    assert report["calls"] <= 60 + 8  # calls already in flight when the cap was reached
    done = len(_journal(tmp_path))
    assert 0 < done < 48
    report = asyncio.run(run_synth(_cfg(tmp_path, "synth.rounds=2")))
    assert report["stopped"] is None and len(_journal(tmp_path)) == 48
    assert report["calls"] > 60  # spending carried over from the first run


def test_accepted_tasks_missing_from_the_pool_are_republished(tmp_path):
    over = ["synth.rounds=1", "synth.attempts_per_round=8"]
    report = asyncio.run(run_synth(_cfg(tmp_path, *over)))
    before = sorted(_pool_ids(tmp_path))
    assert len(before) == report["accepted"] > 0
    for shard in (tmp_path / "pool/shards").iterdir():
        shard.unlink()
    (tmp_path / "pool/manifest.json").unlink()
    asyncio.run(run_synth(_cfg(tmp_path, *over)))
    assert sorted(_pool_ids(tmp_path)) == before


W = get_domain("shop").write_tools


def _skilled_agent(skill):
    """Solves tasks of up to ``skill`` requests, half the samples of one more, none beyond."""

    def make(task, seed):
        n = len(task.provenance.params["requests"])
        if n <= skill or (n == skill + 1 and hash_int(str(seed)) % 2 == 0):
            return OracleAgent(task)
        acts = drop_last_write(task.gold_actions, W) or [*task.gold_actions, *task.forbidden_actions[:1]]
        return OracleAgent(task, actions=acts)

    return make


def test_procedural_curriculum_moves_the_task_mix_to_the_policys_frontier(tmp_path):
    cfg = load_config(
        SynthRunConfig,
        ROOT / "configs/synth_shop_curriculum.yaml",
        [
            f"synth.out_dir={tmp_path}/run",
            f"pool.dir={tmp_path}/pool",
            "synth.progress=false",
            "synth.plans=2",
            "synth.attempts_per_round=16",
            "endpoints.assistant.kind=rules",
            "procedural.id_digits=4",
        ],
    )
    report = asyncio.run(run_synth(cfg, make_agent=_skilled_agent(skill=2)))
    rounds = report["rounds"]
    assert rounds[0]["frontier_share"] == 0.0 and rounds[0]["pass_rate"] == 1.0
    assert rounds[-1]["frontier_share"] >= 0.5
    windows = [[p["knobs"]["max_actions"] for p in r["plans"]] for r in rounds]
    assert windows[0] == [1, 2] and all(w == 3 for w in windows[-1])
    assert any("harder" in p["rationale"] for p in rounds[1]["plans"])


def test_cli_prints_a_summary_and_names_config_errors(tmp_path):
    cmd = _cli(tmp_path, "synth.rounds=1", "synth.attempts_per_round=4")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["proposed"] == 4 and summary["report"].endswith("report.json")
    bad = subprocess.run([*cmd, "synth.roundz=2"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "synth.roundz: unknown key" in bad.stderr
    rules = subprocess.run(
        [*cmd, "endpoints.planner.kind=rules"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert rules.returncode == 2 and "endpoints.planner.kind" in rules.stderr


@pytest.mark.parametrize("path", sorted(ROOT.glob("configs/synth_*.yaml")))
def test_shipped_synth_configs_load(path):
    load_config(SynthRunConfig, path)


@pytest.mark.parametrize("domain", ["retail", "airline"])
def test_tau2_tasks_export_in_tau2s_format_and_score_one_on_gold_replay(tmp_path, domain):
    pytest.importorskip("tau2", reason="needs the tau2 extra (tools/setup_env.sh jax,hf,tau2,dev)")
    from tau2.data_model.tasks import Task as Tau2Task

    from synth.export_tau2 import main as export

    cfg = _cfg(
        tmp_path,
        f"domain.name={domain}",
        "synth.rounds=1",
        "synth.plans=2",
        "synth.attempts_per_round=3",
        "endpoints.user.kind=rules",
        "endpoints.assistant.kind=rules",
        "endpoints.judge.kind=rules",
    )
    report = asyncio.run(run_synth(cfg))
    assert report["accepted"] >= 1
    out = tmp_path / "tasks.json"
    assert (
        export(
            [
                "--pool",
                str(tmp_path / "pool"),
                "--domain",
                domain,
                "--out",
                str(out),
                "--check",
                "--no-progress",
            ]
        )
        == 0
    )
    exported = json.loads(out.read_text())
    assert len(exported) == report["accepted"]  # every one scored 1.0 by tau²'s evaluator
    for t in exported:
        task = Tau2Task.model_validate(t)
        assert task.evaluation_criteria.actions and [
            b.value for b in task.evaluation_criteria.reward_basis
        ] == ["DB", "COMMUNICATE"]


def test_accepted_tasks_passing_rollouts_become_sft_dialogues_and_are_republished(tmp_path):
    """Each accepted task's passing rollouts go to the pool's dialogues (agent view, in the task's
    split), what ``sft_*.data: imported`` trains on; a lost dialogue pool is rebuilt on rerun."""
    from eigen_core.dialogues import DialoguePool, dialogue_root

    over = ["synth.rounds=1", "synth.attempts_per_round=8"]
    asyncio.run(run_synth(_cfg(tmp_path, *over)))
    tasks = {t.id: t for t in TaskPool(tmp_path / "pool").tasks()}
    journal = [r for r in _journal(tmp_path) if r["accepted"]]
    want = sum(1 for r in journal for x in r["rollout"]["rewards"] if x >= 1)
    dialogues = list(DialoguePool(dialogue_root(tmp_path / "pool")).tasks())
    assert len(dialogues) == want > 0
    for d in dialogues:
        task = tasks[d.provenance.params["task_id"]]
        assert d.split == task.split and d.learn == "all" and d.tools
        assert d.messages[0].role == "system" and any(m.role == "assistant" for m in d.messages)
    import shutil

    shutil.rmtree(tmp_path / "pool/sft")
    asyncio.run(run_synth(_cfg(tmp_path, *over)))
    assert sorted(d.id for d in DialoguePool(dialogue_root(tmp_path / "pool")).tasks()) == sorted(
        d.id for d in dialogues
    )
