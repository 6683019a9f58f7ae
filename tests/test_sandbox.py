"""The checker sandbox: results and reasons, and a hostile-code suite in which every attack is
contained, reported as a failed check with a reason, and leaves the host process unaffected."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sandbox_attacks

from verifiers import _sandbox_kernel as kernel
from verifiers.sandbox import Sandbox, WeakSandboxError

KERNEL_LAYERS = {"mountns", "netns", "ipcns", "nobody", "seccomp"}


def test_pass_fail_and_reasons(sandbox):
    assert sandbox.run("def check(x): return x > 1", [2]).passed
    r = sandbox.run("def check(x): return False, 'too small'", [0])
    assert not r.passed and r.reason == "too small"
    r = sandbox.run("def check(x): return 1", [0])
    assert not r.passed and "not bool" in r.reason
    r = sandbox.run("def check(x): raise KeyError('k')", [0])
    assert not r.passed and "KeyError" in r.reason
    r = sandbox.run("x = 1", [0])
    assert not r.passed and "no function 'check'" in r.reason
    r = sandbox.run("def check(:", [0])
    assert not r.passed and "SyntaxError" in r.reason


def test_ordinary_checkers_still_work(sandbox):
    """The policy must not break what checkers legitimately do: stdlib imports, scratch files."""
    code = (
        "import json, re, datetime, collections, math, itertools, statistics, decimal, hashlib\n"
        "def check(db):\n"
        "    open('notes.txt', 'w').write(json.dumps(db))\n"
        "    return json.loads(open('notes.txt').read()) == db and math.isclose(1.0, 1.0)\n"
    )
    r = sandbox.run(code, [{"a": [1, 2]}])
    assert r.passed, r.reason
    assert "audit" in r.layers and "rlimits" in r.layers
    assert KERNEL_LAYERS <= set(r.layers) and not sandbox.weak


def test_threads_still_work_under_the_filter(sandbox):
    code = (
        "import threading\ndef check():\n    out = []\n"
        "    ts = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]\n"
        "    [t.start() for t in ts]; [t.join() for t in ts]\n    return sorted(out) == [0, 1, 2, 3]\n"
    )
    r = sandbox.run(code, [])
    assert r.passed, r.reason


@pytest.fixture(scope="module")
def hostile():
    with Sandbox(workers=2, timeout_s=2.0, memory_mb=256) as sb:
        yield sb


@pytest.fixture
def listener():
    """A TCP server in the host: a checker must not reach it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    hits = []

    def accept():
        try:
            conn, _ = srv.accept()
            hits.append(conn)
        except OSError:
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], hits
    srv.close()


def test_hostile_code_is_contained(hostile, tmp_path, listener):
    port, hits = listener
    attacks = sandbox_attacks.classic_attacks(tmp_path, port)
    results = {name: hostile.run(code, []) for name, (code, _) in attacks.items()}
    for name, (_, expect) in attacks.items():
        r = results[name]
        assert not r.passed, name
        assert any(e in r.reason for e in expect), (name, r.reason)
        assert len(r.reason) <= 2000, name
    # Nothing reached the host: files intact, nothing written, no connection, host alive.
    assert (tmp_path / "outside.txt").read_text() == "host secret"
    assert not (tmp_path / "written.txt").exists()
    assert hits == []
    # The pool still serves ordinary checks, on both workers.
    assert all(hostile.run("def check(): return True", []).passed for _ in range(4))


def _assert_contained(results: dict, host: Path, hits: list) -> None:
    for name, r in results.items():
        assert not r["passed"], (name, r["reason"])
        assert "ESCAPED" not in r["reason"] and "DISARM FAILED" not in r["reason"], (name, r["reason"])
        assert any(e in r["reason"] for e in r["expect"]), (name, r["reason"])
        assert KERNEL_LAYERS <= set(r["layers"]), (name, r["layers"])
    assert (host / "outside.txt").read_text() == "host secret"
    assert not (host / "written.txt").exists()
    assert hits == []


def test_kernel_layer_holds_when_every_python_check_is_switched_off(hostile, tmp_path, listener):
    """Each attack first disables the audit hook (via gc), the zygote's globals, frames and
    sys.modules, and proves it did; then the kernel alone must refuse it."""
    port, hits = listener
    (tmp_path / "outside.txt").write_text("host secret")
    results = sandbox_attacks.run_all(hostile, str(tmp_path), port, os.getpid())
    assert len(results) >= 30
    _assert_contained(results, tmp_path, hits)
    assert all(hostile.run("def check(): return True", []).passed for _ in range(4))


def test_the_checker_sees_only_the_interpreter_and_its_scratch(hostile):
    code = sandbox_attacks.DISARM + (
        "import json\ndef walk(p, depth):\n    out = {}\n    try:\n        names = sorted(os.listdir(p))\n"
        "    except PermissionError:\n        return 'denied'\n    for n in names:\n"
        "        q = os.path.join(p, n)\n"
        "        out[n] = walk(q, depth - 1) if depth and os.path.isdir(q) and not os.path.islink(q) else 0\n"
        "    return out\n"
        "def check():\n    return False, json.dumps([walk('/', 1), os.getcwd(), os.getresuid()])\n"
    )
    r = hostile.run(code, [])
    tree, cwd, uids = json.loads(r.reason)
    assert set(tree) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "root", "scratch", "usr", "opt"}, tree
    assert not {"home", "tmp", "proc", "sys", "work", "var"} & set(tree)
    assert set(tree["dev"]) <= {"null", "zero", "urandom", "random"}
    assert set(tree.get("etc", {})) <= {"ld.so.cache"}
    assert tree["scratch"] == "denied"  # other checks' scratch dirs cannot even be listed
    assert cwd.startswith(kernel.SCRATCH + "/") and uids == [kernel.UNPRIVILEGED] * 3


def _needs_root(why: str) -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip(f"needs root and util-linux's unshare: {why}")


_NO_SYS_ADMIN = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"]


def test_without_the_kernel_layer_the_sandbox_refuses_unless_weak_is_allowed():
    """Root without CAP_SYS_ADMIN (a typical container) cannot build the view: refuse, or with
    allow_weak_sandbox run weak and say so."""
    _needs_root("dropping CAP_SYS_ADMIN simulates a machine without the kernel layer")
    script = (
        "import json\nfrom verifiers.config import VerifierConfig\n"
        "from verifiers.sandbox import Sandbox, WeakSandboxError\n"
        "try:\n    Sandbox(1)\n    refused = None\nexcept WeakSandboxError as e:\n    refused = str(e)\n"
        "with Sandbox.from_config(VerifierConfig(allow_weak_sandbox=True)) as sb:\n"
        "    r = sb.run('def check(): return True', [])\n"
        "    print(json.dumps({'refused': refused, 'describe': sb.describe(), 'passed': r.passed,"
        " 'layers': list(r.layers)}))\n"
    )
    out = subprocess.run(
        [*_NO_SYS_ADMIN, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["refused"] and "verifier.allow_weak_sandbox: true" in got["refused"]
    assert "unshare" in got["refused"]  # names the step that failed
    assert got["describe"]["weak"] and got["describe"]["weak_reason"]
    assert got["passed"] and "seccomp" not in got["layers"] and "audit" in got["layers"]


def test_sandbox_refusal_is_a_clear_error_in_process(monkeypatch):
    import verifiers.sandbox as sandbox_mod

    monkeypatch.setattr(
        sandbox_mod._Zygote,
        "wait_ready",
        lambda self: {
            "kernel": False,
            "layers": [],
            "error": "KernelLayerError: unshare: Operation not permitted",
        },
    )
    with pytest.raises(WeakSandboxError, match="allow_weak_sandbox"):
        Sandbox(1)


def test_unprivileged_user_runs_the_same_view_in_a_user_namespace(tmp_path, listener):
    """Not root (a laptop): the zygote maps itself to uid 65534 in a new user namespace and builds
    the same view; the whole attack suite is contained there too."""
    _needs_root("the test switches to uid 65534 itself (run unprivileged, the main suite covers it)")
    port, hits = listener
    host = tmp_path / "host"
    host.mkdir()
    (host / "outside.txt").write_text("host secret")
    # The host files sit where uid 65534 could reach them, were it not for the sandbox.
    host = Path(shutil.copytree(host, Path("/tmp") / f"eigen-sandbox-host-{os.getpid()}"))
    os.chmod(host, 0o777)
    cmd = sandbox_attacks.unprivileged_command(str(host), port, os.getpid())
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        got = json.loads(done.stdout.splitlines()[-1])
        _assert_contained(got["attacks"], host, hits)
    finally:
        shutil.rmtree(host)
    assert "userns" in got["describe"]["layers"] and not got["describe"]["weak"]
    assert got["still serves"]


def _bpf_run(prog: bytes, arch: int, nr: int, arg0: int = 0) -> int:
    """A small classic-BPF interpreter over seccomp_data, enough for our filter's opcodes."""
    ins = [struct_unpack(prog[i : i + 8]) for i in range(0, len(prog), 8)]
    data = {0: nr, 4: arch, 16: arg0 & 0xFFFFFFFF}
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = ins[pc]
        if code == 0x20:
            acc, pc = data[k], pc + 1
        elif code in (0x15, 0x35, 0x45):
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if hit else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def struct_unpack(b: bytes) -> tuple[int, int, int, int]:
    import struct

    return struct.unpack("HBBI", b)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_filter_decisions(machine):
    prog = kernel.seccomp_program(machine)
    arch = kernel._ARCH[machine][0]
    table = kernel.SYSCALLS[machine]
    allow, eperm, enosys, kill = 0x7FFF0000, 0x50001, 0x50026, 0x80000000
    for name in ("socket", "execve", "ptrace", "kill", "mount", "unshare", "bpf", "setuid"):
        assert _bpf_run(prog, arch, table[name]) == eperm, name
    assert _bpf_run(prog, arch, table["clone"], 0x11) == eperm  # SIGCHLD: a new process
    assert _bpf_run(prog, arch, table["clone"], 0x3D0F00) == allow  # pthread_create's flags
    assert _bpf_run(prog, arch, table["clone3"]) == enosys
    for nr in (0, 1, 3, 9, 60, 231):  # read, write, close, mmap, ... stay allowed
        if nr not in table.values():
            assert _bpf_run(prog, arch, nr) == allow, nr
    assert _bpf_run(prog, 0x40000003, 1) == kill  # i386 ABI: the process dies
    if machine == "x86_64":
        assert _bpf_run(prog, arch, 0x40000000 | 1) == eperm  # x32 ABI


@pytest.mark.parametrize(
    "machine,header,pattern",
    [
        ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", r"#define __NR_(\w+) (\d+)"),
        ("aarch64", "/usr/include/asm-generic/unistd.h", r"#define __NR(?:3264)?_(\w+) (\d+)"),
    ],
)
def test_syscall_numbers_match_the_kernel_headers(machine, header, pattern):
    if not os.path.exists(header):
        pytest.skip(f"{header} not installed (Debian's linux-libc-dev)")
    found = dict(re.findall(pattern, Path(header).read_text()))
    for name, nr in kernel.SYSCALLS[machine].items():
        assert int(found[name]) == nr, (machine, name)


def test_a_dead_worker_costs_one_check_and_the_pool_recovers():
    with Sandbox(workers=1, timeout_s=1.0) as sb:
        assert sb.run("def check(): return True", []).passed
        sb._all[0].proc.kill()  # the zygote dies between checks
        r = sb.run("def check(): return True", [])
        assert not r.passed and "sandbox worker failed" in r.reason
        assert sb.run("def check(): return True", []).passed


def test_code_runs_in_another_process(sandbox):
    code = f"import os\ndef check():\n    return os.getpid() != {os.getpid()}"
    assert sandbox.run(code, []).passed
    r = sandbox.run("import sys\ndef check():\n    return 'pytest' in sys.modules", [])
    assert not r.passed  # the checker's interpreter is not ours
