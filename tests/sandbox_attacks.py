"""Checkers that first switch off every Python-level check they can reach, then attack the host.

Each attack is a checker that returns ``(True, "ESCAPED: ...")`` if what it tried worked and
``(False, "contained: <the error>")`` if the kernel refused. Every one starts with ``DISARM``,
which neutralises the audit hook through its closure (found with ``gc``), clears the zygote's
globals, walks up the frames, and restores ctypes, socket and subprocess in ``sys.modules`` — and
fails the check if it could not (so the suite proves the kernel layer holds on its own).

Used by tests/test_sandbox.py in-process and, for the unprivileged (user-namespace) path, as a
script: ``python tests/sandbox_attacks.py HOST_DIR PORT HOST_PID`` (prints a JSON line).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DISARM = """
import gc, os, sys
def _disarm():
    hooks = 0
    for o in gc.get_objects():
        if getattr(o, "__name__", "") == "hook" and getattr(o, "__closure__", None):
            for cell in o.__closure__:
                if isinstance(cell.cell_contents, list):  # the hook's re-entrancy guard
                    cell.cell_contents.append(1)
                    hooks += 1
    main = sys.modules.get("__main__")
    for name in list(vars(main)):
        if name.startswith("_") and name.isupper() and name.strip("_"):
            setattr(main, name, None)  # the zygote's policy globals
    f = sys._getframe()
    while f is not None:  # the frames above us: the zygote's child function and its request
        f.f_locals.get("req", {}).update(timeout_s=3600, memory_mb=1 << 20)
        f = f.f_back
    import ctypes, socket, subprocess  # the audit policy refuses these imports; now it cannot
    os.listdir("/")  # ... and this (outside scratch)
    return hooks
if _disarm() < 1:
    raise SystemExit("DISARM FAILED: the audit hook was not found")
import ctypes, errno, signal, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)
_x86 = os.uname().machine == "x86_64"
def refused(fn):
    try:
        out = fn()
    except BaseException as e:
        return False, f"contained: {type(e).__name__}: {e}"
    if isinstance(out, int) and out < 0:  # a raw libc call: -1 and errno
        return False, f"contained: errno {ctypes.get_errno()} ({os.strerror(ctypes.get_errno())})"
    return True, f"ESCAPED: {out!r}"
def _open(fd):
    try:
        return os.fstat(fd) is not None
    except OSError:
        return False
"""


def attacks(host_dir: str, port: int, host_pid: int) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (checker body after DISARM, substrings one of which the refusal must contain)."""
    secret, written = f"{host_dir}/outside.txt", f"{host_dir}/written.txt"
    eperm, enoent, eacces, erofs = "Errno 1]", "Errno 2]", "Errno 13]", "Errno 30]"
    a = {
        "write a host file": (f"open({written!r}, 'w').write('x')", (enoent,)),
        "overwrite the interpreter": ("open(os.__file__, 'a').write('#')", (eacces, erofs)),
        "create a file at the root": ("open('/evil', 'w')", (erofs,)),
        "delete a host file": (f"os.remove({secret!r})", (enoent,)),
        "delete the interpreter's files": ("os.remove(os.__file__)", (eacces, erofs)),
        "read a host file": (f"open({secret!r}).read()", (enoent,)),
        "read /etc/passwd": ("open('/etc/passwd').read()", (enoent,)),
        "read /proc": ("open('/proc/1/environ').read()", (enoent,)),
        "list /root": ("[n for n in os.listdir('/root') if n != '.pyenv'] or 1/0", ("ZeroDivision", enoent)),
        "TCP socket": (f"socket.create_connection(('127.0.0.1', {port}), 1)", (eperm,)),
        "unix socket": ("socket.socket(socket.AF_UNIX)", (eperm,)),
        "socketpair": ("socket.socketpair()", (eperm,)),
        "fork": ("os.fork()", (eperm,)),
        "raw fork syscall": ("libc.syscall(57 if _x86 else 220, 17, 0)", ("errno 1",)),
        "x32 ABI fork": ("libc.syscall(0x40000000 | 57) if _x86 else 1/0", ("errno 1", "ZeroDivision")),
        "clone a process": ("libc.syscall(56 if _x86 else 220, 17, 0, 0, 0, 0)", ("errno 1",)),
        "posix_spawn": ("os.posix_spawn(sys.executable, ['python', '-c', '1'], {})", (eperm, enoent)),
        "subprocess": ("subprocess.run([sys.executable, '-c', '1'])", (eperm, enoent)),
        "exec the interpreter": ("os.execv(sys.executable, ['python', '-c', '1'])", (eperm,)),
        "signal the parent": ("os.kill(os.getppid(), signal.SIGKILL)", (eperm,)),
        "signal the host": (f"os.kill({host_pid}, signal.SIGKILL)", (eperm,)),
        "signal everything": ("os.kill(-1, signal.SIGKILL)", (eperm,)),
        "pidfd of the parent": ("os.pidfd_open(os.getppid())", (eperm,)),
        "ptrace the parent": ("libc.ptrace(16, os.getppid(), 0, 0)", ("errno 1",)),
        "become root": ("os.setuid(0)", (eperm,)),
        "new user namespace": ("libc.unshare(0x10000000)", ("errno 1",)),
        "mount": ("libc.mount(b'none', b'/scratch', b'tmpfs', 0, None)", ("errno 1",)),
        "chroot": ("os.chroot('/scratch')", (eperm,)),
        "open_by_handle_at": ("libc.syscall(304 if _x86 else 265, -100, 0, 0)", ("errno 1",)),
        "io_uring": ("libc.syscall(425, 8, ctypes.create_string_buffer(120))", ("errno 1",)),
        "bpf": ("libc.syscall(321 if _x86 else 280, 0, 0, 0)", ("errno 1",)),
        "fill the disk": (
            "[open(f'f{i}', 'wb').write(b'x' * (1 << 20)) for i in range(10**6)]",
            ("Errno 28]", "Errno 27]"),
        ),
        # Open descriptors past stdio, less the result pipe: there must be none.
        "inherited descriptors": ("[fd for fd in range(3, 1024) if _open(fd)][1:] or 1/0", ("ZeroDivision",)),
    }
    return {
        name: (f"{DISARM}\ndef check():\n    return refused(lambda: {body})\n", expect)
        for name, (body, expect) in a.items()
    }


def run_all(sandbox, host_dir: str, port: int, host_pid: int) -> dict[str, dict]:
    """Run every attack; name -> {passed, reason, layers}."""
    out = {}
    for name, (code, expect) in attacks(host_dir, port, host_pid).items():
        r = sandbox.run(code, [])
        out[name] = {"passed": r.passed, "reason": r.reason, "layers": list(r.layers), "expect": expect}
    return out


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from verifiers.sandbox import Sandbox

    host_dir, port, host_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with Sandbox(workers=1, timeout_s=5.0, memory_mb=256) as sb:
        results = {"describe": sb.describe(), "attacks": run_all(sb, host_dir, port, host_pid)}
        results["still serves"] = sb.run("def check(): return True", []).passed
    print(json.dumps(results))


if __name__ == "__main__":
    main()
