"""The package layering of docs/architecture.md, checked on every import in the source (lazy
ones inside functions included): each package imports only the packages below it."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]

MAY_IMPORT = {
    "eigen_core": set(),
    "rollout": {"eigen_core"},
    "verifiers": {"eigen_core", "rollout"},
    "synth": {"eigen_core", "rollout", "verifiers"},
    "eigen_apps": {"eigen_core", "rollout", "verifiers", "synth"},
    "eigen_jax": {"eigen_core", "rollout", "verifiers", "synth", "eigen_apps"},
}
"""Package -> the project packages its modules may import."""


def imported_packages(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source``."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_no_package_imports_one_above_it():
    wrong = []
    for pkg, allowed in MAY_IMPORT.items():
        files = sorted((ROOT / pkg).rglob("*.py"))
        assert files, pkg
        for f in files:
            bad = (imported_packages(f.read_text()) & set(MAY_IMPORT)) - allowed - {pkg}
            wrong += [f"{f.relative_to(ROOT)} imports {b}" for b in sorted(bad)]
    assert not wrong, wrong


def test_every_package_is_in_the_table():
    """A new top-level package gets a place in the layering."""
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "tools"}
    assert found == set(MAY_IMPORT)


def test_the_check_sees_lazy_imports():
    src = "def f():\n    from eigen_jax.sampler import Sampler\n    import synth.run\n"
    assert imported_packages(src) == {"eigen_jax", "synth"}
