"""The checker sandbox: results and reasons, and a hostile-code suite in which every attack is
contained, reported as a failed check with a reason, and leaves the host process unaffected."""

import os
import socket
import threading

import pytest

from verifiers.sandbox import Sandbox


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


def _attacks(tmp_path, port):
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
            ("died", "timeout", "recursion", "memory"),
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


def test_hostile_code_is_contained(hostile, tmp_path, listener):
    port, hits = listener
    attacks = _attacks(tmp_path, port)
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


def test_network_is_gone_even_below_the_policy(hostile):
    """Where the machine allows it (root), the checker also has no network interface at all."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root; the audit policy alone blocks sockets here")
    r = hostile.run("def check(): return True", [])
    assert "netns" in r.layers


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
