"""Fuzz every target at a larger scale and record the counts in RELIABILITY.md.

    python tools/bench/fuzz.py [--scale 10]

Runs the hypothesis targets of tests/test_fuzz.py and tests/test_pool.py (parsers, the OpenAI
message reader, tau² tools, the config loader, both HTTP servers, damaged pool shards and
manifests) with ``EIGEN_FUZZ_SCALE`` times their CI example counts, and tabulates hypothesis'
own statistics: cases run, failures. Exits 1 if any target failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(Path(__file__).parent))

from _report import RELIABILITY, machine, write_section  # noqa: E402

TARGETS = ["tests/test_fuzz.py", "tests/test_pool.py::test_damaged_shards_are_quarantined_and_the_rest_reads",
           "tests/test_pool.py::test_a_damaged_manifest_is_rebuilt_from_the_previous_one"]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=10.0)
    args = ap.parse_args()
    env = {**os.environ, "EIGEN_FUZZ_SCALE": str(args.scale)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics",
           "-n", "2", *TARGETS]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    rows, failed = [], 0
    for block in re.split(r"\n(?=tests/\S+::\S+:\n)", out.stdout):
        name = re.match(r"tests/\S+::(\S+):", block)
        counts = re.findall(r"(\d+) passing, (\d+) failing, and (\d+) invalid", block)
        if name and counts:
            ok = sum(int(p) for p, _, _ in counts)
            bad = sum(int(f) for _, f, _ in counts)
            failed += bad
            rows.append(f"| `{name.group(1).removeprefix('test_')}` | {ok + bad} | {bad} |")
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]
    body = f"""## Fuzzing: cases run per target

`python tools/bench/fuzz.py --scale {args.scale:g}` — {machine()}. Hypothesis, {args.scale:g}× the
example counts CI runs (`tests/test_fuzz.py`, the pool's damage tests); every target must either
succeed or fail the documented way (flagged message, error observation, `ConfigError` naming the
place, quarantined shard, 4xx). pytest: {summary}

| target | cases | failures |
|---|---:|---:|
{chr(10).join(rows)}

Found and fixed while writing these targets: `from_openai` raised `TypeError` on a non-list
`tool_calls`; `eigen_jax.serve` answered 500 to a non-UTF-8 body and to malformed `tools`;
`eigen_apps.rollout_server` answered 500 to a non-JSON body, a bad `version` or `sample_index`, and to a
failing engine (now 400, 400 and 502 naming the engine).

Slow requests (`tests/test_fuzz.py::test_slow_clients_are_cut_off_while_others_are_served`, both
servers): a client that stops half-way through its headers was held open by aiohttp for an hour
(its keep-alive default when an app is run by hand), and one that stops half-way through its body
forever; now the first is disconnected after `server.idle_timeout_s`, the second answered 408
after `server.read_timeout_s`, and a request meanwhile is served. A flood is bounded too
(`test_a_full_server_answers_429_with_retry_after_and_its_health_check_still_answers`): beyond
`server.max_inflight` requests at once the answer is 429 with `Retry-After`, `/health` still
answers, and a slot frees when its request ends or is cut off.
"""
    print(body)
    write_section("fuzz", body, RELIABILITY)
    return 1 if failed or out.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
