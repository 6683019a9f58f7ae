import os

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


def test_limits_are_enforced_and_host_unaffected():
    with Sandbox(workers=1, timeout_s=1.0, memory_mb=256) as sb:
        r = sb.run("def check():\n    while True: pass", [])
        assert not r.passed and ("timeout" in r.reason or "CPU" in r.reason)
        r = sb.run("def check():\n    x = bytearray(2 * 1024**3)\n    return True", [])
        assert not r.passed and "memory" in r.reason
        r = sb.run("def check():\n    return check()", [])
        assert not r.passed and "recursion" in r.reason
        # The checker cannot reach the caller's memory: globals are its own.
        r = sb.run("import sys\ndef check():\n    return 'pytest' in sys.modules", [])
        assert not r.passed
        # Killing its own worker costs that check only; the pool recovers.
        r = sb.run("import os\ndef check():\n    os.kill(os.getppid(), 9)\n    return True", [])
        assert not r.passed
        assert sb.run("def check(): return True", []).passed


def test_code_runs_in_another_process(sandbox):
    code = f"import os\ndef check():\n    return os.getpid() != {os.getpid()}"
    assert sandbox.run(code, []).passed
