"""Run untrusted checker code outside the caller's process.

A ``Sandbox`` keeps a small pool of warm zygote processes (``_sandbox_worker.py``); each check
is executed in a child forked from a zygote, under CPU-time, address-space and file-size limits
and a wall-clock deadline, in an empty scratch directory. Forking from a warm zygote costs about
a millisecond, against ~30 ms for a fresh interpreter, which keeps validating thousands of tasks
fast. The code is never ``exec``'d in the caller's process.

Confinement is enforced by the kernel, so that it holds even against code that defeats every
Python-level check: each zygote lives in its own mount, network and IPC namespaces with a
read-only root holding only the interpreter and system libraries, and each child drops to uid
65534 with no capabilities and a seccomp filter (no process creation, exec, ptrace, signals,
sockets, mounts) before it runs the checker. Where that cannot be applied, the sandbox refuses to
start unless ``allow_weak`` (``verifier.allow_weak_sandbox``) says weak confinement is acceptable;
``Sandbox.layers`` and ``Sandbox.describe()`` say what held. Every way a checker can misbehave ends
as a failed check with a reason (tests/test_sandbox.py runs a hostile-code suite).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verifiers.config import VerifierConfig

log = logging.getLogger(__name__)
_WORKER = Path(__file__).with_name("_sandbox_worker.py")


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: a failure of any kind (exception, timeout, limit) is ``passed=False``."""

    passed: bool
    reason: str
    seconds: float = 0.0
    layers: tuple[str, ...] = ()
    """Confinement layers that were in place (``mountns``, ``netns``, ``ipcns``, ``userns``,
    ``nobody``, ``seccomp``, ``rlimits``, ``audit``; see ``_sandbox_worker.py``)."""


class WeakSandboxError(RuntimeError):
    """The kernel layer cannot be applied here and weak confinement was not explicitly allowed."""


_HELLO_TIMEOUT_S = 60.0


class _Zygote:
    def __init__(self, mountpoint: str, kernel: bool, scratch_mb: int):
        self.kernel = kernel
        opts = json.dumps({"kernel": kernel, "scratch_mb": scratch_mb})
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(_WORKER), mountpoint, opts],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.hello: dict[str, Any] | None = None

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError("sandbox worker did not answer")
        return result[0]

    def wait_ready(self) -> dict[str, Any]:
        """The zygote's hello: {"kernel": bool, "layers": [...], "error": str | None}."""
        if self.hello is None:
            self.hello = json.loads(self._readline(_HELLO_TIMEOUT_S))
        return self.hello

    def request(self, req: dict[str, Any], wall_timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        hello = self.wait_ready()
        if self.kernel and not hello["kernel"]:  # a replacement zygote could not confine: never run
            raise RuntimeError(f"kernel layer failed in a new worker: {hello.get('error')}")
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._readline(wall_timeout))

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
        allow_weak: where the kernel layer cannot be applied (no root and no unprivileged user
            namespaces, or no seccomp), run checkers under the Python-level layers only instead
            of refusing; ``weak`` then says so.
        scratch_mb: size of the checker's writable tmpfs (kernel layer only).

    Raises:
        WeakSandboxError: the kernel layer cannot be applied and ``allow_weak`` is false.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        allow_weak: bool = False,
        scratch_mb: int = 64,
    ):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._scratch_mb = scratch_mb
        self._scratch = tempfile.TemporaryDirectory(prefix="eigen-sandbox-")
        self._idle: queue.Queue[_Zygote] = queue.Queue()
        self._all: list[_Zygote] = []
        self._lock = threading.Lock()
        self._kernel = True
        first = self._spawn()
        try:
            hello = first.wait_ready()
        except (RuntimeError, ValueError) as e:
            self.close()
            raise RuntimeError(f"the checker sandbox failed to start: {e}") from e
        self.weak = not hello["kernel"]
        """True when checks run without the kernel layer (only with ``allow_weak``)."""
        self.weak_reason: str | None = hello.get("error")
        if self.weak:
            self._drop(first)
            if not allow_weak:
                self.close()
                raise WeakSandboxError(
                    "the checker sandbox cannot confine untrusted code on this machine "
                    f"({self.weak_reason}); its kernel layer needs root or unprivileged user "
                    "namespaces, and seccomp. To run checkers under Python-level checks only, set "
                    "verifier.allow_weak_sandbox: true (reports then say the sandbox ran weak)."
                )
            self._kernel = False
            log.warning("checker sandbox runs WEAK (no kernel layer): %s", self.weak_reason)
            first = self._spawn()
        self.layers: tuple[str, ...] = tuple(first.wait_ready()["layers"])
        """Confinement layers in place: the zygote's at start, then those of the latest check."""
        self._idle.put(first)
        for _ in range(workers - 1):
            self._idle.put(self._spawn())

    @classmethod
    def from_config(cls, v: VerifierConfig) -> Sandbox:
        """The sandbox a run's ``verifier`` section asks for."""
        return cls(
            v.sandbox_workers, v.checker_timeout_s, v.checker_memory_mb, allow_weak=v.allow_weak_sandbox
        )

    def describe(self) -> dict[str, Any]:
        """What reports record about the confinement that checks ran under."""
        return {"layers": list(self.layers), "weak": self.weak, "weak_reason": self.weak_reason}

    def _spawn(self) -> _Zygote:
        z = _Zygote(self._scratch.name, self._kernel, self._scratch_mb)
        with self._lock:
            self._all.append(z)
        return z

    def _drop(self, z: _Zygote) -> None:
        z.close()
        with self._lock:
            self._all.remove(z)

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
            self._drop(zygote)
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
