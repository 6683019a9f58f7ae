"""Sandbox zygote: run as its own process (``python -I -S _sandbox_worker.py MOUNTPOINT OPTS``).

Reads one JSON request per line on stdin, forks a child per request, and writes one JSON result
per line on stdout; its first line is a hello saying whether the kernel layer holds. The zygote
enforces a wall-clock deadline and kills the child past it. Standard library (and ctypes) only,
so that it starts fast; it imports nothing of ours but ``_sandbox_kernel``.

Layers, outermost first (``layers`` in every result says which were in place):

- kernel (``OPTS.kernel``; see ``_sandbox_kernel.py``), enforced below Python so that the checker
  cannot undo it: ``mountns`` (a fresh read-only root: the interpreter, system libraries and a
  tmpfs scratch, nothing else of the host), ``netns`` (no network interface), ``ipcns``,
  ``userns`` (when not started as root), ``nobody`` (uid 65534, no capabilities,
  no_new_privs: never root) and ``seccomp`` (no process creation, exec, ptrace, signals,
  sockets, mounts or namespaces). If it cannot be applied, the zygote says why and exits; the
  host may then start a weak zygote (``OPTS.kernel`` false) only when told it may.
- weak fallback, without the kernel layer: ``netns`` and ``nobody`` where root allows them
  (``nobody`` is skipped where that user cannot read the standard library, e.g. a Python under
  /root, and then the checker runs as root).
- ``rlimits``: CPU seconds, address space, file size, open files, processes, no core dumps.
- ``audit``: a ``sys.addaudithook`` policy that refuses process creation, signals, sockets,
  ctypes, rlimit changes, imports of the modules that wrap those, and file access outside the
  scratch directory except reading the standard library. It gives clear reasons; it is not a
  wall (its state is reachable from the checker's own interpreter).

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


def _confine(req, scratch, keep_fd):
    """Apply this child's layers on top of the zygote's; return the names of all applied."""
    global _UNSHARE
    layers = list(_ZYGOTE_LAYERS)
    os.closerange(3, keep_fd)  # nothing of the zygote's stays open but the result pipe
    os.closerange(keep_fd + 1, 1 << 16)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    if _KERNEL is None and os.geteuid() == 0:
        if _UNSHARE is not None and _UNSHARE(0x40000000) == 0:  # CLONE_NEWNET
            layers.append("netns")
        if _NOBODY_CAN_IMPORT:
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
    unprivileged = _KERNEL is not None or "nobody" in layers
    for limit, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)),
        (resource.RLIMIT_NOFILE, (64, 64)),
        # Threads only (the kernel layer refuses fork): a few, shared by every uid-65534 task.
        (resource.RLIMIT_NPROC, ((16, 16) if _KERNEL is not None else (1, 1)) if unprivileged else None),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        if value is not None:
            resource.setrlimit(limit, value)
    layers.append("rlimits")
    os.chdir(scratch)
    os.environ.update(TMPDIR=scratch, HOME=scratch)
    if _KERNEL is not None:
        # Past these two calls the checker is uid 65534 with no capabilities under a seccomp
        # filter: whatever it does to the Python-level layer below, the kernel still refuses.
        _KERNEL.drop_privileges()
        layers.append("nobody")
        _KERNEL.install_seccomp()
        layers.append("seccomp")
    # Leave nothing of ctypes reachable from the checker (sys.modules, our globals). A
    # convenience for clear error messages: the kernel layers above are the wall.
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
        layers = _confine(req, scratch, write_fd)
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
    if _KERNEL is not None and os.geteuid() == 0:
        os.chown(scratch, _NOBODY, _NOBODY)
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


def _probe_unprivileged():
    """In a throwaway child: drop privileges, filter syscalls, import a module not yet loaded.

    Proves the checker's view holds what Python needs (its stdlib readable by uid 65534) and that
    the filter refuses what it should; returns None or the reason it did not hold."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        why = "ok"
        try:
            _KERNEL.drop_privileges()
            _KERNEL.install_seccomp()
            __import__("wave")  # reads the standard library as uid 65534
            try:
                os.fork()
                why = "seccomp let fork through"
            except PermissionError:
                pass
        except BaseException as e:
            why = f"{type(e).__name__}: {e}"
        os.write(w, why.encode()[:500])
        os._exit(0)
    os.close(w)
    why = os.read(r, 500).decode() or "probe child died"
    os.close(r)
    os.waitpid(pid, 0)
    return None if why == "ok" else why


def _setup_kernel(mountpoint, scratch_mb):
    """Enter the kernel layer (see _sandbox_kernel.py); return (module or None, layers, error)."""
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import _sandbox_kernel as kernel

        del sys.path[0]
        layers = kernel.enter_view(mountpoint, scratch_mb)
    except Exception as e:
        return None, [], f"{type(e).__name__}: {e}"
    global _KERNEL
    _KERNEL = kernel
    why = _probe_unprivileged()
    if why is not None:
        # The namespaces are entered but do not hold: never run checkers in a half-built view.
        return None, [], f"unprivileged probe failed: {why}"
    return kernel, layers, None


_KERNEL = None  # the _sandbox_kernel module once its layer holds in this zygote
_ZYGOTE_LAYERS = ()
_UNSHARE = None
_NOBODY_CAN_IMPORT = False
# Imported once here so that checkers get them without touching the file system.
_PRELOAD = """datetime collections math itertools functools statistics decimal fractions random
    hashlib string copy typing dataclasses enum traceback operator heapq bisect textwrap""".split()


def main():
    global _UNSHARE, _NOBODY_CAN_IMPORT, _KERNEL, _ZYGOTE_LAYERS
    mountpoint, opts = sys.argv[1], json.loads(sys.argv[2])
    for name in _PRELOAD:
        __import__(name)
    kernel, layers = None, []
    if opts["kernel"]:
        kernel, layers, error = _setup_kernel(mountpoint, opts["scratch_mb"])
        if kernel is None:
            # Never fall back inside this process (it may be half inside the new view): the host
            # decides whether a weak zygote may be started instead.
            _hello(False, [], error)
            return
        scratch_root = kernel.SCRATCH
    else:
        _UNSHARE = _load_unshare()
        _NOBODY_CAN_IMPORT = _nobody_can_import()
        scratch_root = mountpoint
        os.chmod(scratch_root, 0o711)  # a child running as nobody must reach its own scratch dir
    _ZYGOTE_LAYERS = tuple(layers)
    _hello(kernel is not None, layers, None)
    out = sys.stdout
    for line in sys.stdin:
        try:
            req = json.loads(line)
            result = _run(req, scratch_root)
        except Exception as e:  # a bad request must not kill the zygote
            result = {"passed": False, "reason": f"sandbox error: {type(e).__name__}: {e}", "seconds": 0.0}
        out.write(json.dumps(result) + "\n")
        out.flush()


def _hello(kernel, layers, error):
    """First line on stdout: whether the kernel layer holds, the zygote's layers, why not."""
    sys.stdout.write(json.dumps({"hello": 1, "kernel": kernel, "layers": layers, "error": error}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
