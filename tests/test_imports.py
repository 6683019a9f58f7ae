import subprocess
import sys
import textwrap

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
