"""Process bookkeeping: everything the bench starts ends with the bench.

The orchestrator makes itself a child subreaper, so a server orphaned by its
supervisor is re-parented to us instead of init, and every process the bench
started stays findable as one of our descendants. Processes are only ever
signalled by pid.
"""

import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def descendants(root: int) -> list[int]:
    """Pids of every live process below root (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: parse after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def kill_leftovers() -> list[str]:
    """SIGKILLs whatever is left below us and reaps it; returns what it found."""
    found = []
    for pid in descendants(os.getpid()):
        found.append(f"{pid} {command_line(pid)}")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap_orphans(wait=bool(found))
    return found


def reap_orphans(wait: bool) -> None:
    """Collects exited processes that were re-parented to us. Only called when
    none of our own Popen objects is still waiting for its child."""
    deadline = time.monotonic() + (2 if wait else 0)
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)


def stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> bool:
    """Sends sig and waits; SIGKILLs the process group after timeout.
    Returns whether the process exited in time on its own."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        # Started with start_new_session, so its pgid is its pid.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
        return False


def free_loopback_addr() -> str:
    """A free TCP port on 127.0.0.1 below the ephemeral range, so that no
    client connection of the load can hold it while a server is down."""
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = list(range(20000, low)) if low > 21000 else list(range(high + 1, 65000))
    for port in random.sample(candidates, 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"127.0.0.1:{port}"
    raise RuntimeError("no free port found on 127.0.0.1")
