"""Run untrusted checker code outside the caller's process.

A ``Sandbox`` keeps a small pool of warm zygote processes (``_sandbox_worker.py``); each check
is executed in a child forked from a zygote, under CPU-time, address-space and file-size limits
and a wall-clock deadline, in an empty scratch directory. Forking from a warm zygote costs about
a millisecond, against ~30 ms for a fresh interpreter, which keeps validating thousands of tasks
fast. The code is never ``exec``'d in the caller's process.

Inside the child, layers of confinement (a new network namespace, an unprivileged uid, rlimits,
an audit-hook policy against process creation, signals, sockets, ctypes and file access outside
the scratch directory) are applied as far as the machine allows; ``Sandbox.layers`` says which
did. Every way a checker can misbehave ends as a failed check with a reason (tests/test_sandbox.py
runs a hostile-code suite).
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_WORKER = Path(__file__).with_name("_sandbox_worker.py")


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: a failure of any kind (exception, timeout, limit) is ``passed=False``."""

    passed: bool
    reason: str
    seconds: float = 0.0
    layers: tuple[str, ...] = ()
    """Confinement layers that were in place (``netns``, ``nobody``, ``rlimits``, ``audit``)."""


class _Zygote:
    def __init__(self, scratch_root: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(_WORKER), scratch_root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )

    def request(self, req: dict[str, Any], wall_timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(wall_timeout)
        if not result or not result[0]:
            raise RuntimeError("sandbox worker did not answer")
        return json.loads(result[0])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Sandbox:
    """A pool of sandbox workers. Thread-safe; ``run`` blocks, ``arun`` awaits.

    Args:
        workers: zygote processes (checks run concurrently up to this many).
        timeout_s: wall-clock and CPU-time limit per check.
        memory_mb: address-space limit per check.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 512):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._scratch = tempfile.TemporaryDirectory(prefix="eigen-sandbox-")
        self._idle: queue.Queue[_Zygote] = queue.Queue()
        self._all: list[_Zygote] = []
        self._lock = threading.Lock()
        self.layers: tuple[str, ...] = ()
        """Confinement layers of the latest completed check (empty before the first)."""
        for _ in range(workers):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Zygote:
        z = _Zygote(self._scratch.name)
        with self._lock:
            self._all.append(z)
        return z

    def run(self, code: str, args: list[Any], entry: str = "check") -> CheckResult:
        """Execute ``entry(*args)`` from ``code`` in a sandboxed child; args must be JSON-able."""
        req = {
            "code": code,
            "entry": entry,
            "args": args,
            "timeout_s": self.timeout_s,
            "memory_mb": self.memory_mb,
            "max_result_bytes": 65536,
        }
        zygote = self._idle.get()
        try:
            out = zygote.request(req, wall_timeout=self.timeout_s + 10.0)
        except (RuntimeError, OSError, ValueError) as e:
            # The zygote itself failed (killed, hung, broken pipe): replace it, fail the check.
            zygote.close()
            with self._lock:
                self._all.remove(zygote)
            zygote = self._spawn()
            return CheckResult(False, f"sandbox worker failed: {e}")
        finally:
            self._idle.put(zygote)
        result = CheckResult(
            bool(out["passed"]),
            str(out["reason"]),
            float(out.get("seconds", 0.0)),
            tuple(out.get("layers", ())),
        )
        if result.layers:
            self.layers = result.layers
        return result

    async def arun(self, code: str, args: list[Any], entry: str = "check") -> CheckResult:
        return await asyncio.to_thread(self.run, code, args, entry)

    def close(self) -> None:
        with self._lock:
            for z in self._all:
                z.close()
            self._all.clear()
        self._scratch.cleanup()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
