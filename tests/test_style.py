import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ruff_clean():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_module_over_500_lines():
    for pkg in ("eigen_jax", "rollout", "synth", "verifiers", "tools"):
        for path in (ROOT / pkg).rglob("*.py"):
            n = len(path.read_text().splitlines())
            assert n <= 500, f"{path} has {n} lines"


def test_no_function_over_80_lines():
    """Outside tools/bench (one-off measurement scripts), no function runs over 80 lines."""
    import ast

    long = []
    for pkg in ("eigen_jax", "rollout", "synth", "verifiers", "tools", "tests"):
        for path in (ROOT / pkg).rglob("*.py"):
            if "bench" in path.relative_to(ROOT).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = node.end_lineno - node.lineno + 1
                    if n > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long
