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


def _defines(path: Path, dotted: str) -> bool:
    """Whether module ``path`` defines ``dotted`` (``Name`` or ``Class.member``) at top level."""
    import ast

    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    for part in dotted.split("."):
        found = None
        for node in scope:
            names = []
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            if part in names:
                found = node
                break
        if found is None:
            return False
        scope = getattr(found, "body", [])
    return True


def test_the_architecture_page_names_only_what_exists():
    """docs/architecture.md must be true of the code: each `file.py` and `file.py:Name[.member]`
    it names resolves (a bare file name must be unique among the packages)."""
    text = (ROOT / "docs/architecture.md").read_text()
    packages = ("eigen_core", "eigen_jax", "eigen_apps", "rollout", "verifiers", "synth", "tests", "tools")
    files = [p for pkg in packages for p in (ROOT / pkg).rglob("*.py") if "bench" not in p.parts]
    refs = set(re.findall(r"([\w/]+\.py)(?::([\w.]+))?", text))
    assert len(refs) > 30
    missing = []
    for ref, name in sorted(refs):
        hits = [p for p in files if p.relative_to(ROOT).as_posix().endswith(ref)]
        hits = [p for p in hits if p.relative_to(ROOT).as_posix() == ref or "/" + ref in "/" + p.as_posix()]
        if len(hits) != 1:
            missing.append(f"{ref} ({len(hits)} files)")
        elif name and not _defines(hits[0], name):
            missing.append(f"{ref}:{name}")
    assert not missing, missing
