"""Kernel-enforced confinement for the sandbox zygote: standard library and ctypes only.

Loaded by ``_sandbox_worker.py`` (never by our other code). Python-level checks can be defeated by
the code they police; what is set up here cannot, because the kernel enforces it and the checker
has no privilege left to undo it:

- ``enter_view`` (the zygote, once): new mount, network, IPC and UTS namespaces — as root directly,
  otherwise inside a new user namespace where the user is mapped to uid 65534 — and a fresh root
  file system: an empty read-only tmpfs holding read-only bind mounts of the interpreter and the
  system libraries, three harmless device nodes, and a size-limited tmpfs for scratch. Nothing
  else of the host (``/root``, ``/home``, ``/etc``, ``/proc``, ``/tmp``, the project) is visible.
- ``drop_privileges`` (each child): uid/gid 65534 with no groups, every capability dropped (root
  loses them on the uid change; inside a user namespace they are cleared explicitly), and
  ``no_new_privs``.
- ``install_seccomp`` (each child): a BPF filter that answers EPERM to process creation (fork,
  vfork, a non-thread clone, exec), ptrace and cross-process memory access, signals, sockets,
  namespaces and mounts, kernel modules, BPF, io_uring, keyrings, handle-based opens and other
  system administration calls, and kills the process on a foreign syscall ABI.
"""

import ctypes
import errno
import os
import struct
import sys

UNPRIVILEGED = 65534
SCRATCH = "/scratch"
_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWNET, _CLONE_THREAD = 0x10000000, 0x40000000, 0x00010000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MS_NOATIME, _MS_NODIRATIME, _MS_RELATIME = 1024, 2048, 1 << 21
_MNT_DETACH = 2
# statvfs f_flag bit -> mount flag; a bind remount inside a user namespace must keep these.
_KEEP_FLAGS = ((8, _MS_NOEXEC), (1024, _MS_NOATIME), (2048, _MS_NODIRATIME), (4096, _MS_RELATIME))
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")

# Syscalls refused with EPERM, by name; numbers per ABI (x86_64: asm/unistd_64.h, aarch64:
# asm-generic/unistd.h; tests/test_sandbox.py checks them against the headers where installed).
# clone is handled apart (threads stay allowed); clone3 answers ENOSYS so that the C library falls
# back to clone, whose flags a filter can read.
_DENY = """fork vfork execve execveat ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd
    kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_send_signal pidfd_open socket
    socketpair unshare setns mount umount2 pivot_root chroot move_mount open_tree fsopen fsconfig
    fsmount fspick mount_setattr bpf perf_event_open userfaultfd io_uring_setup io_uring_enter
    io_uring_register keyctl add_key request_key init_module finit_module delete_module kexec_load
    kexec_file_load reboot swapon swapoff acct quotactl syslog iopl ioperm open_by_handle_at
    name_to_handle_at personality mknod mknodat setuid setgid setreuid setregid setresuid setresgid
    setgroups setfsuid setfsgid capset sethostname setdomainname settimeofday clock_settime
    clock_adjtime adjtimex uselib vhangup lookup_dcookie""".split()
SYSCALLS = {
    "x86_64": {
        "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "ptrace": 101,
        "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438,
        "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
        "pidfd_send_signal": 424, "pidfd_open": 434, "socket": 41, "socketpair": 53, "unshare": 272,
        "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "keyctl": 250,
        "add_key": 248, "request_key": 249, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
        "swapon": 167, "swapoff": 168, "acct": 163, "quotactl": 179, "syslog": 103, "iopl": 172,
        "ioperm": 173, "open_by_handle_at": 304, "name_to_handle_at": 303, "personality": 135,
        "mknod": 133, "mknodat": 259, "setuid": 105, "setgid": 106, "setreuid": 113,
        "setregid": 114, "setresuid": 117, "setresgid": 119, "setgroups": 116, "setfsuid": 122,
        "setfsgid": 123, "capset": 126, "sethostname": 170, "setdomainname": 171,
        "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
        "uselib": 134, "vhangup": 153, "lookup_dcookie": 212, "clone": 56, "clone3": 435,
    },
    "aarch64": {
        "execve": 221, "execveat": 281, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "kcmp": 272, "pidfd_getfd": 438, "kill": 129, "tkill": 130,
        "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240, "pidfd_send_signal": 424,
        "pidfd_open": 434, "socket": 198, "socketpair": 199, "unshare": 97, "setns": 268,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "move_mount": 429,
        "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "keyctl": 219,
        "add_key": 217, "request_key": 218, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294, "reboot": 142,
        "swapon": 224, "swapoff": 225, "acct": 89, "quotactl": 60, "syslog": 116,
        "personality": 92, "mknodat": 33, "setuid": 146, "setgid": 144, "setreuid": 145,
        "setregid": 143, "setresuid": 147, "setresgid": 149, "setgroups": 159, "setfsuid": 151,
        "setfsgid": 152, "capset": 91, "sethostname": 161, "setdomainname": 162,
        "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171,
        "vhangup": 58, "lookup_dcookie": 18, "clone": 220, "clone3": 435,
    },
}  # fmt: skip
# AUDIT_ARCH_* token, and the lowest number of a foreign ABI that shares it (x86_64's x32), if any.
_ARCH = {"x86_64": (0xC000003E, 0x40000000), "aarch64": (0xC00000B7, None)}


def _nr(name):
    return SYSCALLS[os.uname().machine][name]


_libc = ctypes.CDLL(None, use_errno=True)


class KernelLayerError(OSError):
    """The kernel confinement could not be applied on this machine (the message says which step)."""


def _check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise KernelLayerError(e, f"{what}: {os.strerror(e)}")


def _mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _bind_ro(src, dst, is_dir):
    if is_dir:
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(src, dst, None, _MS_BIND)  # not recursive: no hidden submount comes along
    keep = os.statvfs(src).f_flag
    flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID
    flags |= sum(ms for st, ms in _KEEP_FLAGS if keep & st)
    if is_dir:
        flags |= _MS_NODEV
    _mount(None, dst, None, flags)


def readable_paths():
    """What a checker may read: the interpreter's installation and the system's shared libraries."""
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.__file__))}
    paths.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    for p in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache"):
        if os.path.exists(p):
            paths.add(os.path.realpath(p))
    # Parents first; a path inside another bound one comes with it.
    out = []
    for p in sorted(paths, key=lambda q: (q.count(os.sep), q)):
        if p != "/" and not any(p == q or p.startswith(q + os.sep) for q in out):
            out.append(p)
    return out


def _enter_namespaces():
    uid, gid = os.geteuid(), os.getegid()
    common = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    if uid == 0:
        _check(_libc.unshare(common), "unshare(mount, net, ipc, uts)")
        return ["netns", "ipcns"]
    _check(_libc.unshare(common | _CLONE_NEWUSER), "unshare(user, mount, net, ipc, uts)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{UNPRIVILEGED} {uid} 1")
    _write("/proc/self/gid_map", f"{UNPRIVILEGED} {gid} 1")
    return ["userns", "netns", "ipcns"]


def enter_view(mountpoint, scratch_mb):
    """Move this process into fresh namespaces with a minimal read-only root; return the layers.

    ``mountpoint`` is an empty host directory (it becomes the new root, inside our mount namespace
    only). After this, ``SCRATCH`` is the only writable place: a tmpfs of ``scratch_mb`` MiB.
    """
    layers = _enter_namespaces()
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount leaks back to the host
    _mount("none", mountpoint, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=4m,mode=0755")
    new = mountpoint.rstrip("/")
    for p in readable_paths():
        _bind_ro(p, new + p, os.path.isdir(p))
    for p in ("/bin", "/usr/bin"):  # merged-usr symlinks keep sys.executable's path meaningful
        if os.path.islink(p):
            os.makedirs(os.path.dirname(new + p), exist_ok=True)
            os.symlink(os.readlink(p), new + p)
    for dev in _DEVICES:
        if os.path.exists(dev):
            os.makedirs(new + "/dev", exist_ok=True)
            open(new + dev, "a").close()
            _mount(dev, new + dev, None, _MS_BIND)
            _mount(None, new + dev, None, _MS_BIND | _MS_REMOUNT | _MS_NOSUID | _MS_NOEXEC)
    os.makedirs(new + SCRATCH)
    _mount(
        "none",
        new + SCRATCH,
        "tmpfs",
        _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
        f"size={int(scratch_mb)}m,nr_inodes=4096,mode=0711",
    )
    os.makedirs(new + "/.old")  # pivot_root's put_old; detached and removed right after
    _check(_libc.syscall(_nr("pivot_root"), os.fsencode(new), os.fsencode(new + "/.old")), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old", _MNT_DETACH), "umount old root")
    os.rmdir("/.old")
    _mount(None, "/", None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    return ["mountns", *layers]


def drop_privileges():
    """No uid 0, no groups, no capabilities, no way to gain any (call in the child, before seccomp)."""
    if os.getuid() == 0 or os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(UNPRIVILEGED, UNPRIVILEGED, UNPRIVILEGED)
        os.setresuid(UNPRIVILEGED, UNPRIVILEGED, UNPRIVILEGED)
    # capset(v3 header for this thread, empty effective/permitted/inheritable sets)
    header = struct.pack("Ii", 0x20080522, 0)
    data = ctypes.create_string_buffer(24)
    _check(_libc.syscall(_nr("capset"), header, data), "capset")
    _check(_libc.prctl(38, 1, 0, 0, 0), "prctl(no_new_privs)")  # PR_SET_NO_NEW_PRIVS
    if os.getuid() == 0 or os.geteuid() == 0:
        raise KernelLayerError(errno.EPERM, "still uid 0 after dropping privileges")


def seccomp_program(machine=None):
    """The BPF filter as bytes of ``struct sock_filter`` (a pure function, for tests)."""
    machine = machine or os.uname().machine
    table, (arch, foreign) = SYSCALLS[machine], _ARCH[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    # [arch check][load nr][foreign ABI?][deny list][clone3][clone: load flags, test thread bit]
    # [ALLOW][EPERM][ENOSYS]. BPF jumps are relative to the next instruction.
    tests = [(jge, foreign, "eperm")] if foreign is not None else []
    tests += [(jeq, nr, "eperm") for nr in sorted({table[n] for n in _DENY if n in table})]
    tests.append((jeq, table["clone3"], "enosys"))
    head = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    at = {"allow": len(head) + len(tests) + 3}
    at.update(eperm=at["allow"] + 1, enosys=at["allow"] + 2)
    prog = head + [(op, at[to] - (len(head) + i) - 1, 0, k) for i, (op, k, to) in enumerate(tests)]
    pc = len(prog)
    prog.append((jeq, 0, at["allow"] - pc - 1, table["clone"]))  # any other syscall: allowed
    prog.append((ld, 0, 0, 16))  # low 32 bits of args[0]: clone's flags
    prog.append((jset, at["allow"] - pc - 3, at["eperm"] - pc - 3, _CLONE_THREAD))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm), (ret, 0, 0, enosys)]
    assert len(prog) == at["enosys"] + 1 and all(0 <= i[1] < 256 and 0 <= i[2] < 256 for i in prog)
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


def install_seccomp():
    """Load the filter into this process (after ``drop_privileges``: needs no_new_privs)."""
    code = seccomp_program()
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(code) // 8, ctypes.addressof(buf))
    _check(_libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0), "prctl(seccomp)")  # SET_SECCOMP, FILTER
