"""Sandbox zygote: run as its own process (``python -I -S _sandbox_worker.py``), never imported.

Reads one JSON request per line on stdin, forks a child per request, and writes one JSON result
per line on stdout. The child lowers its resource limits (CPU time, address space, file size,
open files), moves to an empty scratch directory, silences stdout/stderr, then executes the
untrusted source and calls its entry point. The zygote enforces a wall-clock deadline and kills
the child past it. Standard library only, so that it starts fast and imports nothing of ours.

Request:  {"code": str, "entry": str, "args": list, "timeout_s": float, "memory_mb": int,
           "max_result_bytes": int}
Result:   {"passed": bool, "reason": str, "seconds": float}
"""

import json
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time


def _child(req, write_fd, scratch):
    try:
        cpu = max(1, int(req["timeout_s"] + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        mem = int(req["memory_mb"]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.chdir(scratch)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        namespace = {"__name__": "__checker__"}
        exec(compile(req["code"], "<checker>", "exec"), namespace)  # this child IS the sandbox
        fn = namespace.get(req["entry"])
        if not callable(fn):
            out = {"passed": False, "reason": f"checker defines no function {req['entry']!r}"}
        else:
            value = fn(*req["args"])
            if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bool):
                out = {"passed": value[0], "reason": str(value[1])[:2000]}
            elif isinstance(value, bool):
                out = {"passed": value, "reason": "passed" if value else "checker returned False"}
            else:
                out = {"passed": False, "reason": f"checker returned {type(value).__name__}, not bool"}
    except MemoryError:
        out = {"passed": False, "reason": "memory limit exceeded"}
    except RecursionError:
        out = {"passed": False, "reason": "recursion limit exceeded"}
    except BaseException as e:  # everything the checker does is a result, never a crash
        out = {"passed": False, "reason": f"checker raised {type(e).__name__}: {str(e)[:500]}"}
    try:
        data = json.dumps(out).encode()
    except Exception:
        data = json.dumps({"passed": False, "reason": "unserializable checker result"}).encode()
    os.write(write_fd, data[: int(req.get("max_result_bytes", 65536))])
    os._exit(0)


def _run(req, scratch_root):
    t0 = time.monotonic()
    scratch = tempfile.mkdtemp(dir=scratch_root)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(req, w, scratch)
    os.close(w)
    deadline = t0 + float(req["timeout_s"])
    chunks, timed_out = [], False
    limit = int(req.get("max_result_bytes", 65536))
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        if sum(map(len, chunks)) > limit:
            break
    os.close(r)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - t0
    if timed_out:
        return {"passed": False, "reason": f"timeout after {req['timeout_s']}s", "seconds": seconds}
    raw = b"".join(chunks)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = {signal.SIGXCPU: "CPU time limit exceeded", signal.SIGKILL: "killed"}.get(sig, f"signal {sig}")
        return {"passed": False, "reason": f"checker process died: {why}", "seconds": seconds}
    try:
        out = json.loads(raw)
        return {"passed": bool(out["passed"]), "reason": str(out["reason"]), "seconds": seconds}
    except (ValueError, KeyError, TypeError):
        return {"passed": False, "reason": "checker process produced no valid result", "seconds": seconds}


def main():
    scratch_root = sys.argv[1]
    out = sys.stdout
    for line in sys.stdin:
        try:
            req = json.loads(line)
            result = _run(req, scratch_root)
        except Exception as e:  # a bad request must not kill the zygote
            result = {"passed": False, "reason": f"sandbox error: {type(e).__name__}: {e}", "seconds": 0.0}
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
