"""The checker sandbox under attack: every hostile suite, as root and as an unprivileged user.

    python tools/bench/sandbox_security.py

Runs tests/sandbox_attacks.py's two suites — the classic one (refused by the audit policy, with
the kernel layer beneath) and the kernel suite (each attack first switches off every Python-level
check it can reach, then tries) — in a ``Sandbox`` as this user and, when run as root, again as
uid 65534 through a user namespace; then checks that a machine without the kernel layer (root
without CAP_SYS_ADMIN) is refused unless weak confinement is allowed. Writes RELIABILITY.md's
sandbox section; exits 1 if anything escaped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))

import sandbox_attacks as sa  # noqa: E402
from _report import RELIABILITY, machine, write_section  # noqa: E402

from verifiers.sandbox import Sandbox  # noqa: E402


def _contained(passed: bool, reason: str, expect: tuple[str, ...]) -> bool:
    return not passed and "ESCAPED" not in reason and any(e in reason for e in expect)


def _weak_refusal() -> str:
    if os.geteuid() != 0:
        return "not run (needs root to drop CAP_SYS_ADMIN)"
    script = (
        "from verifiers.sandbox import Sandbox, WeakSandboxError\n"
        "try:\n    Sandbox(1)\n    print('started')\nexcept WeakSandboxError:\n    print('refused')\n"
        "with Sandbox(1, allow_weak=True) as sb:\n    print('weak' if sb.weak else 'strong')\n"
    )
    cmd = [
        "setpriv",
        "--bounding-set",
        "-sys_admin",
        "--inh-caps",
        "-sys_admin",
        sys.executable,
        "-c",
        script,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120).stdout.split()
    return "refused; with allow_weak: ran, reported weak" if out == ["refused", "weak"] else f"FAILED: {out}"


def main() -> int:
    rows, totals = [], {}
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.settimeout(0.01)
        port = srv.getsockname()[1]
        host = Path(tmp)
        os.chmod(host, 0o777)
        (host / "outside.txt").write_text("host secret")
        me = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        with Sandbox(workers=2, timeout_s=2.0, memory_mb=256) as sb:
            classic = {n: sb.run(c, []) for n, (c, _) in sa.classic_attacks(host, port).items()}
            layers = ", ".join(sb.layers)
            expect = {n: e for n, (_, e) in sa.classic_attacks(host, port).items()}
            kernel = sa.run_all(sb, str(host), port, os.getpid())
        ok = sum(_contained(r.passed, r.reason, expect[n]) for n, r in classic.items())
        totals[f"classic, {me}"] = (ok, len(classic))
        ok = sum(_contained(r["passed"], r["reason"], tuple(r["expect"])) for r in kernel.values())
        totals[f"kernel (Python checks off first), {me}"] = (ok, len(kernel))
        rows = [(n, r["reason"].removeprefix("contained: ")[:90]) for n, r in kernel.items()]
        if os.geteuid() == 0:
            done = subprocess.run(
                sa.unprivileged_command(str(host), port, os.getpid()),
                capture_output=True,
                text=True,
                timeout=300,
            )
            got = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else {"attacks": {}}
            un = got["attacks"]
            ok = sum(_contained(r["passed"], r["reason"], tuple(r["expect"])) for r in un.values())
            totals["kernel (Python checks off first), uid 65534 via user namespace"] = (ok, len(kernel))
        try:
            srv.accept()
            reached = True
        except OSError:
            reached = False
        intact = (host / "outside.txt").read_text() == "host secret" and not (host / "written.txt").exists()
    weak = _weak_refusal()
    escaped = sum(n - ok for ok, n in totals.values())
    table = "\n".join(f"| {k} | {n} | {ok} |" for k, (ok, n) in totals.items())
    attacks = "\n".join(f"| {n} | {why.replace('|', '/')} |" for n, why in rows)
    body = f"""## Checker sandbox: attacks tried and contained

`python tools/bench/sandbox_security.py` — {machine()}. Layers in place: {layers}.

| suite | attacks tried | contained |
|---|---:|---:|
{table}

Host afterwards: files intact and nothing written: {"yes" if intact else "NO"}; the listener
reached: {"YES" if reached else "no"}. Without the kernel layer (root lacking CAP_SYS_ADMIN):
{weak}.

What the kernel answered each attack of the kernel suite (after the checker had disabled the
audit hook, the worker's globals and `sys.modules`):

| attack | refused with |
|---|---|
{attacks}
"""
    print(body)
    write_section("sandbox-attacks", body, RELIABILITY)
    return 1 if escaped or reached or not intact or weak.startswith("FAILED") else 0


if __name__ == "__main__":
    sys.exit(main())
