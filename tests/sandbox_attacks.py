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
def nothing(found):  # an attack that looks for something reachable: finding nothing is refusal
    if found:
        return found
    raise LookupError("nothing reachable")
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
        "list /root": ("nothing([n for n in os.listdir('/root') if n != '.pyenv'])", ("LookupError", enoent)),
        "TCP socket": (f"socket.create_connection(('127.0.0.1', {port}), 1)", (eperm,)),
        "unix socket": ("socket.socket(socket.AF_UNIX)", (eperm,)),
        "socketpair": ("socket.socketpair()", (eperm,)),
        "fork": ("os.fork()", (eperm,)),
        "raw fork syscall": ("libc.syscall(57 if _x86 else 220, 17, 0)", ("errno 1",)),
        "x32 ABI fork": ("libc.syscall(0x40000000 | 57) if _x86 else nothing(0)", ("errno 1", "LookupError")),
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
        "inherited descriptors": (
            "nothing([fd for fd in range(3, 1024) if _open(fd)][1:])",
            ("LookupError",),
        ),
    }
    return {
        name: (f"{DISARM}\ndef check():\n    return refused(lambda: {body})\n", expect)
        for name, (body, expect) in a.items()
    }


def classic_attacks(tmp_path: Path, port: int) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Attacks the audit policy itself refuses (name -> (checker, substrings of the reason))."""
    outside = tmp_path / "outside.txt"
    outside.write_text("host secret")
    target = tmp_path / "written.txt"
    return {
        "infinite loop": ("def check():\n    while True: pass", ("timeout", "CPU")),
        "memory bomb": ("def check():\n    x = bytearray(4 * 1024**3)\n    return True", ("memory",)),
        "fork bomb": ("import os\ndef check():\n    while True: os.fork()", ("os.fork",)),
        "fork via posix": ("import posix\ndef check():\n    posix.fork()\n    return True", ("os.fork",)),
        "read outside scratch": (
            f"def check():\n    return 'secret' in open({str(outside)!r}).read()",
            ("access",),
        ),
        "read /etc/passwd": ("def check():\n    return len(open('/etc/passwd').read()) > 0", ("access",)),
        "write outside scratch": (
            f"def check():\n    open({str(target)!r}, 'w').write('x')\n    return True",
            ("access",),
        ),
        "os.open for writing": (
            f"import os\ndef check():\n    os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n"
            "    return True",
            ("access",),
        ),
        "delete outside scratch": (
            f"import os\ndef check():\n    os.remove({str(outside)!r})\n    return True",
            ("os.remove",),
        ),
        "list the host": ("import os\ndef check():\n    return len(os.listdir('/')) > 0", ("os.listdir",)),
        "socket": (
            f"import socket\ndef check():\n    socket.create_connection(('127.0.0.1', {port}), 1)\n"
            "    return True",
            ("socket",),
        ),
        "socket through sys.modules": (
            "import sys\ndef check():\n    s = sys.modules.get('_socket')\n    s.socket()\n    return True",
            ("NoneType", "socket"),
        ),
        "os.system": (
            f"import os\ndef check():\n    return os.system('touch {target}') == 0",
            ("os.system",),
        ),
        "subprocess": (
            "import subprocess\ndef check():\n    subprocess.run(['true'])\n    return True",
            ("subprocess",),
        ),
        "exec a program": ("import os\ndef check():\n    os.execv('/bin/true', ['true'])", ("os.exec",)),
        "ctypes": ("import ctypes\ndef check():\n    return True", ("ctypes",)),
        "raise rlimits": (
            "import resource\ndef check():\n"
            "    resource.setrlimit(resource.RLIMIT_CPU, (999, 999))\n    return True",
            ("setrlimit",),
        ),
        "deep recursion": ("def check():\n    return check()", ("recursion",)),
        "recursion past the C stack": (
            "import sys\nsys.setrecursionlimit(10**8)\ndef f(n): return f(n + 1)\ndef check(): return f(0)",
            # CPython 3.11 keeps Python frames off the C stack; when RLIMIT_AS stops its frame
            # allocator it can return NULL with no exception set (SystemError).
            ("died", "timeout", "recursion", "memory", "SystemError"),
        ),
        "huge output": ("def check():\n    print('x' * 10**7)\n    return False, 'y' * 10**7", ("yyyy",)),
        "kill its parent": (
            "import os\ndef check():\n    os.kill(os.getppid(), 9)\n    return True",
            ("os.kill",),
        ),
        "kill everything": ("import os\ndef check():\n    os.kill(-1, 9)\n    return True", ("os.kill",)),
        "exit the process": ("import os\ndef check():\n    os._exit(0)", ("no valid result",)),
        "escape via the zygote's globals": (
            "import sys\ndef check():\n    return sys.modules['__main__']._UNSHARE(0) == 0",
            ("NoneType",),
        ),
    }


_UNPRIVILEGED_VIEW = """
import os, sys, tempfile, subprocess
# Make the interpreter, the venv and this checkout traversable for uid 65534 in a private mount
# namespace (Python often lives under /root, mode 0700), then run the command as that user.
need = [os.path.realpath(p) for p in sys.argv[1:4]]
for top in sorted({os.sep + p.split(os.sep)[1] for p in need}):
    if os.stat(top).st_mode & 0o001:
        continue
    keep = tempfile.mkdtemp()
    subprocess.run(["mount", "--bind", top, keep], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", top], check=True)
    for p in need:
        if p.startswith(top + os.sep):
            rel = os.path.relpath(p, top).split(os.sep)[0]
            os.makedirs(os.path.join(top, rel), exist_ok=True)
            subprocess.run(["mount", "--bind", os.path.join(keep, rel), os.path.join(top, rel)], check=True)
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
os.execv(sys.argv[4], sys.argv[4:])
"""


def unprivileged_command(host_dir: str, port: int, host_pid: int) -> list[str]:
    """As root: run this file's kernel suite as uid 65534 in a private mount namespace."""
    repo = Path(__file__).parents[1]
    need = [sys.base_prefix, sys.prefix, str(repo)]
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        sys.executable,
        "-c",
        _UNPRIVILEGED_VIEW,
        *need,
        sys.executable,
        str(Path(__file__)),
        host_dir,
        str(port),
        str(host_pid),
    ]


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
