"""A launched topology for GRPO through rollout servers: a pool and a tiny random agent, a policy
engine (``eigen_jax.serve``) and two rollout servers, each behind a fault proxy."""

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

from flax import nnx

from eigen_core.configio import load_config
from eigen_jax.config import RunConfig
from eigen_jax.model import Decoder, DecoderConfig
from eigen_jax.model.hf import save_hf
from eigen_jax.train import run
from eigen_jax.train_config import TINY_ARCH
from rollout.vllm_server import free_port

ROOT = Path(__file__).parents[1]


def _launch(args, log):
    return subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_health(url, proc, timeout=180):
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def pool_and_agent(tmp_path, arch: dict | None = None):
    """A pool, the run's tokenizer (in tmp/tok) and a random tiny agent (tmp/agent; ``arch``
    overrides TINY_ARCH's fields)."""
    cfg = load_config(
        RunConfig,
        ROOT / "configs/quickstart.yaml",
        [
            f"run.out_dir={tmp_path}/run",
            f"pool.dir={tmp_path}/run/pool",
            "run.progress=false",
            "procedural.num_tasks=40",
            "run.stages=[generate]",
        ],
    )
    run(cfg)  # the pool, and the run's tokenizer
    from eigen_jax.train import stage_context

    tok = stage_context(cfg).tok
    tok.save(tmp_path / "tok")
    arch = {**TINY_ARCH, **(arch or {}), "vocab_size": -(-tok.vocab_size // 64) * 64}
    save_hf(
        Decoder(DecoderConfig.from_hf(arch), rngs=nnx.Rngs(0)),
        tmp_path / "agent",
        tokenizer_dir=tmp_path / "tok",
    )


@contextlib.contextmanager
def topology(
    tmp_path, rate: float = 0.2, engine_args: tuple[str, ...] = (), server_args: tuple[str, ...] = ()
):
    """A policy engine (``eigen_jax.serve`` with ``engine_args``) and two rollout servers (with
    ``server_args`` overrides), each behind a fault proxy injecting ``rate`` of faults of every
    kind; yields the processes and their ports (the proxies': fe, f1, f2)."""
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("engine", "r1", "r2", "fe", "f1", "f2")}
    ep, p1, p2 = free_port(), free_port(), free_port()
    fe, f1, f2 = free_port(), free_port(), free_port()  # fault proxies in front of each
    procs = {
        "engine": _launch(
            ["eigen_jax.serve", "--model", str(tmp_path / "agent"), "--port", str(ep), *engine_args],
            logs["engine"],
        )
    }
    for name, port, up, seed in (("fe", fe, ep, 1), ("f1", f1, p1, 2), ("f2", f2, p2, 3)):
        procs[name] = _launch(
            ["rollout.fault_proxy", f"--upstream=http://127.0.0.1:{up}", f"--port={port}", f"--rate={rate}",
             f"--seed={seed}", "--hang-s=2", "--retry-after-s=0.05"],
            logs[name],
        )  # fmt: skip
    for name, port in (("r1", p1), ("r2", p2)):
        procs[name] = _launch(
            [
                "eigen_apps.rollout_server", f"server.port={port}", f"agent.url=http://127.0.0.1:{fe}",
                "agent.timeout_s=30", "agent.max_retries=6", "agent.model=agent",
                f"agent.tokenizer={tmp_path / 'tok'}",
                "episode.user=scripted", "episode.turn_tokens=16", "episode.max_steps=3",
                "episode.max_len=1024", "server.progress_every=1", *server_args,
            ],
            logs[name],
        )  # fmt: skip
    try:
        _wait_health(f"http://127.0.0.1:{ep}", procs["engine"])
        for port, name in ((p1, "r1"), (p2, "r2"), (fe, "fe"), (f1, "f1"), (f2, "f2")):
            _wait_health(f"http://127.0.0.1:{port}", procs[name])  # (a proxy: until one gets through)
        yield procs, {"engine": ep, "r1": p1, "r2": p2, "fe": fe, "f1": f1, "f2": f2}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs.values():
            f.close()
