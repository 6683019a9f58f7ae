"""kill -9 injection per stage, with resume: how many kills landed, where, and what held.

    python tools/bench/kills.py [--sft-kills 20] [--grpo-kills 20]

Runs tests/test_kill_resume.py (synth and eval: 20 kills each; SFT and GRPO: ``--sft-kills`` and
``--grpo-kills``, 5 and 4 in CI) and
tabulates what the harness recorded. Writes RELIABILITY.md's kill section; exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(Path(__file__).parent))

from _report import RELIABILITY, machine, write_section  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sft-kills", type=int, default=20)
    ap.add_argument("--grpo-kills", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "kills.jsonl"
        env = {**os.environ, "EIGEN_KILL_REPORT": str(report), "EIGEN_SFT_KILLS": str(args.sft_kills),
               "EIGEN_GRPO_KILLS": str(args.grpo_kills)}  # fmt: skip
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "slow",
            "tests/test_kill_resume.py",
        ]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        rows = [json.loads(x) for x in report.read_text().splitlines()] if report.exists() else []
    lines = [
        f"| {r['stage']} | {sum(r['killed'].values())} | "
        + ", ".join(f"{k} {n}" for k, n in sorted(r["killed"].items()))
        + f" | {r['rounds']} | {'yes' if r['resumed'] else 'NO'} | {r['exact']} |"
        for r in rows
    ]  # fmt: skip
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]
    body = f"""## kill -9 at random points, then resume

`python tools/bench/kills.py --sft-kills {args.sft_kills} --grpo-kills {args.grpo_kills}` —
{machine()}. Each round SIGKILLs the command at a seeded random time (after its imports, within
twice an even share of its work) or at a named crash point (`eigen_core.crashpoints`: a shard
written but not published, a checkpoint half saved, a journal line half written, a GRPO update
applied in memory but not yet saved), then the next round resumes it; after the last kill the
run resumes to the end and is compared with an uninterrupted run. pytest: {summary}

| stage | kills | where | rounds | resumed | what held |
|---|---:|---|---:|---|---|
{chr(10).join(lines)}

Found and fixed by this harness: a synth journal line torn by a kill was glued to the next
record after the resume, and the run directory then failed to load.
"""
    print(body)
    write_section("kills", body, RELIABILITY)
    return out.returncode


if __name__ == "__main__":
    sys.exit(main())
