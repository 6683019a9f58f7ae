"""The README's two commands and CI cannot drift apart."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _readme_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- (test|quickstart)-command -->\s*```(?:bash|sh)?\n(.*?)\n```", readme, re.S)
    return {name: body.strip() for name, body in blocks}


def test_readme_has_both_commands():
    cmds = _readme_commands()
    assert set(cmds) == {"test", "quickstart"}
    for cmd in cmds.values():
        script = cmd.split()[1]
        assert (ROOT / script).exists(), script


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert _readme_commands()["test"] in [line.strip() for line in ci]


def test_scripts_are_executable_and_strict():
    for path in [ROOT / ".ci/run", *(ROOT / "tools").glob("*.sh")]:
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text, path
