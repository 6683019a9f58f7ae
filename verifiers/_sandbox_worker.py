"""Sandbox zygote: run as its own process (``python -I -S _sandbox_worker.py``), never imported.

Reads one JSON request per line on stdin, forks a child per request, and writes one JSON result
per line on stdout. The zygote enforces a wall-clock deadline and kills the child past it.
Standard library only, so that it starts fast and imports nothing of ours.

The child confines itself in layers before it runs the untrusted source, each a backstop for the
others (``LAYERS`` reports which applied on this machine):

- ``netns``: a new, empty network namespace (needs root): no interface, so no network at all.
- ``nobody``: when started as root, drop to uid/gid 65534 with no supplementary groups, so the
  checker cannot signal our processes or write files it does not own (skipped where that user
  cannot read the standard library, e.g. a Python installed under /root).
- ``rlimits``: CPU seconds, address space, file size, open files, processes, no core dumps.
- ``audit``: a ``sys.addaudithook`` policy that refuses process creation (fork, exec, system,
  spawn, subprocess), signals, sockets, ctypes, rlimit changes, imports of the modules that wrap
  those, and any file access outside the scratch directory except reading the standard library.
  Audit hooks cannot be removed once installed.

Request:  {"code": str, "entry": str, "args": list, "timeout_s": float, "memory_mb": int,
           "max_result_bytes": int}
Result:   {"passed": bool, "reason": str, "seconds": float, "layers": [str]}
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

_NOBODY = 65534
_BLOCKED_EVENTS = frozenset(
    """os.system os.exec os.posix_spawn os.spawn os.fork os.forkpty os.kill os.killpg
    os.setuid os.setgid os.chroot subprocess.Popen pty.spawn socket.__new__ socket.connect
    socket.bind socket.getaddrinfo socket.gethostbyname socket.sendto socket.socketpair
    ctypes.dlopen ctypes.dlsym ctypes.cdata ctypes.call_function resource.setrlimit
    resource.prlimit signal.pthread_kill sys._current_frames webbrowser.open urllib.Request
    http.client.connect ftplib.connect smtplib.connect""".split()
)
_BLOCKED_MODULES = frozenset(
    """ctypes _ctypes socket _socket ssl _ssl subprocess _posixsubprocess multiprocessing
    _multiprocessing pty asyncio concurrent urllib http ftplib smtplib telnetlib""".split()
)
_WRITE_PATH_EVENTS = frozenset(
    """os.remove os.rename os.mkdir os.rmdir os.symlink os.link os.chmod os.chown os.truncate
    os.utime os.chflags os.setxattr os.removexattr shutil.rmtree shutil.copyfile shutil.copytree
    shutil.move shutil.make_archive""".split()
)
_READ_PATH_EVENTS = frozenset("os.listdir os.scandir os.chdir glob.glob".split())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _inside(path, roots):
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return any(real == r or real.startswith(r + os.sep) for r in roots)


def _install_audit_policy(scratch):
    scratch = os.path.realpath(scratch)
    stdlib = tuple(
        os.path.realpath(p) for p in {os.path.dirname(os.__file__), sys.prefix, sys.base_prefix} if p
    )
    busy = []

    def hook(event, args):
        if busy:  # our own checks below (realpath) must not recurse into the policy
            return
        busy.append(1)
        try:
            if event in _BLOCKED_EVENTS:
                raise PermissionError(f"sandbox: {event} is not allowed")
            if event == "import" and args and str(args[0]).split(".")[0] in _BLOCKED_MODULES:
                raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
            if event == "open":
                path, mode, flags = [*list(args), None, None, 0][:3]
                if isinstance(path, int) or path is None:
                    return
                writes = bool((flags or 0) & _WRITE_FLAGS) or any(c in (mode or "") for c in "wax+")
                if not _inside(path, (scratch,)) and (writes or not _inside(path, stdlib)):
                    raise PermissionError(f"sandbox: access to {os.fsdecode(path)!r} is not allowed")
            elif event in _WRITE_PATH_EVENTS or event in _READ_PATH_EVENTS:
                # Imports list the standard library's directories; nothing else outside scratch.
                roots = (scratch,) if event in _WRITE_PATH_EVENTS else (scratch, *stdlib)
                for p in args:
                    if isinstance(p, str | bytes) and not _inside(p, roots):
                        raise PermissionError(f"sandbox: {event} outside the scratch directory")
        finally:
            busy.pop()

    sys.addaudithook(hook)


def _confine(req, scratch):
    """Apply every layer that this machine allows; return the names of those applied."""
    global _UNSHARE
    layers = []
    if os.geteuid() == 0:
        if _UNSHARE is not None and _UNSHARE(0x40000000) == 0:  # CLONE_NEWNET
            layers.append("netns")
    if os.geteuid() == 0 and _NOBODY_CAN_IMPORT:
        try:
            os.chown(scratch, _NOBODY, _NOBODY)
            os.setgroups([])
            os.setgid(_NOBODY)
            os.setuid(_NOBODY)
            layers.append("nobody")
        except OSError:
            pass
    cpu = max(1, int(req["timeout_s"] + 0.999))
    mem = int(req["memory_mb"]) * 1024 * 1024
    for limit, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)),
        (resource.RLIMIT_NOFILE, (64, 64)),
        (resource.RLIMIT_NPROC, (1, 1) if "nobody" in layers else None),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        if value is not None:
            resource.setrlimit(limit, value)
    layers.append("rlimits")
    os.chdir(scratch)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    # Leave nothing of ctypes reachable from the checker (sys.modules, our globals).
    _UNSHARE = None
    for name in list(sys.modules):
        if name.split(".")[0] in _BLOCKED_MODULES:
            del sys.modules[name]
    _install_audit_policy(scratch)
    layers.append("audit")
    return layers


def _child(req, write_fd, scratch):
    layers = []
    try:
        layers = _confine(req, scratch)
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
    out["layers"] = layers
    try:
        data = json.dumps(out).encode()
    except Exception:
        data = json.dumps(
            {"passed": False, "reason": "unserializable checker result", "layers": layers}
        ).encode()
    try:
        os.write(write_fd, data[: int(req.get("max_result_bytes", 65536))])
    finally:
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
        return {
            "passed": bool(out["passed"]),
            "reason": str(out["reason"]),
            "seconds": seconds,
            "layers": list(out.get("layers", [])),
        }
    except (ValueError, KeyError, TypeError):
        return {"passed": False, "reason": "checker process produced no valid result", "seconds": seconds}


def _load_unshare():
    """libc's unshare, loaded once in the zygote (children are forked after this)."""
    if os.geteuid() != 0:
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).unshare
    except Exception:
        return None


def _nobody_can_import():
    """Whether uid 65534 can read the standard library (not when Python lives under /root)."""
    if os.geteuid() != 0:
        return False
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(_NOBODY)
            os.setuid(_NOBODY)
            with open(os.path.join(os.path.dirname(os.__file__), "datetime.py"), "rb"):
                os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


_UNSHARE = None
_NOBODY_CAN_IMPORT = False
# Imported once here so that checkers get them without touching the file system.
_PRELOAD = """datetime collections math itertools functools statistics decimal fractions random
    hashlib string copy typing dataclasses enum traceback operator heapq bisect textwrap""".split()


def main():
    global _UNSHARE, _NOBODY_CAN_IMPORT
    _UNSHARE = _load_unshare()
    _NOBODY_CAN_IMPORT = _nobody_can_import()
    for name in _PRELOAD:
        __import__(name)
    scratch_root = sys.argv[1]
    os.chmod(scratch_root, 0o711)  # a child running as nobody must reach its own scratch dir
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
