"""The eval stage: pass^k files, plot and table; an interrupted eval resumes without redoing."""

import json
from pathlib import Path

from eigen_core.configio import load_config
from eigen_jax.config import RunConfig
from eigen_jax.train import run

ROOT = Path(__file__).parents[1]


def test_eval_writes_passk_and_resumes(tmp_path, capsys):
    cfg = load_config(
        RunConfig,
        ROOT / "configs/quickstart.yaml",
        [
            f"run.out_dir={tmp_path}",
            f"pool.dir={tmp_path}/pool",
            "run.progress=false",
            "procedural.num_tasks=30",
            "run.stages=[generate,eval]",
            "episode.user=scripted",
            "episode.turn_tokens=16",
            "episode.max_len=512",
            "episode.max_steps=3",
            "eval.max_tasks=4",
            "eval.trials=3",
        ],
    )
    summary = run(cfg)["eval"]
    assert set(summary["pass_hat_k"]) == {"base"}  # sft / rl stages did not run: skipped
    pk = summary["pass_hat_k"]["base"]
    assert set(pk) == {"1", "2", "3"} and all(0 <= pk[k] <= 1 for k in pk)
    assert pk["1"] >= pk["2"] >= pk["3"]
    jsonl = tmp_path / "eval/base.jsonl"
    recs = [json.loads(x) for x in jsonl.read_text().splitlines()]
    n = summary["tasks"] * 3
    assert (
        n >= 6
        and len(recs) == n
        and {(r["task_id"], r["trial"]) for r in recs} == {(r["task_id"], k) for r in recs for k in range(3)}
    )
    assert (tmp_path / "eval/passk.png").read_bytes()[:4] == b"\x89PNG"
    assert "pass^3" in capsys.readouterr().out
    # kill mid-way: drop the last records and tear the last line; the rerun redoes only those
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    again = run(cfg)["eval"]
    recs2 = [json.loads(x) for x in jsonl.read_text().splitlines() if x.endswith("}")]
    assert recs2[:4] == recs[:4] and len(recs2) == n and again["pass_hat_k"] == summary["pass_hat_k"]
    # Other settings (here the eval seed) do not reuse those trials: they run afresh, and the
    # earlier ones stay in the file; back on the first settings nothing runs again.
    other = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"seed": cfg.eval.seed + 1})})
    run(other)
    recs3 = [json.loads(x) for x in jsonl.read_text().splitlines() if x.endswith("}")]
    assert len(recs3) == 2 * n and len({r["settings"] for r in recs3}) == 2
    assert recs3[:4] == recs[:4]
    assert run(cfg)["eval"]["pass_hat_k"] == summary["pass_hat_k"]
    assert len([x for x in jsonl.read_text().splitlines() if x.endswith("}")]) == 2 * n
