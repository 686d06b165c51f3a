"""Helpers of overhead.py: /proc readings, waiting, the status query and
table rows."""

import json
import os
import statistics
import subprocess
import sys
import time

DEADLINE = 10.0


def env_number(key, default, kind, low, high):
    raw = os.environ.get(key, default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        sys.exit(f"overhead: {key}={raw}: want a number from {low} to {high}")
    return value


def wait_until(what, cond, timeout=DEADLINE):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.001)
    sys.exit(f"overhead: timed out waiting for {what}")


def lines(path):
    """The timing server's log: one tuple of integers per generation."""
    try:
        with open(path) as f:
            return [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: v.strip() for k, v in fields.items()}


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; fields resume after its ')'.
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # utime + stime (fields 14, 15)


def switches(pid):
    s = proc_status(pid)
    return int(s["voluntary_ctxt_switches"]) + int(s["nonvoluntary_ctxt_switches"])


def children(pid):
    """The pids whose parent is `pid`, and their argv."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if proc_status(entry)["PPid"] == str(pid):
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found.append((int(entry), f.read().split(b"\0")))
        except (OSError, KeyError):  # gone since listdir
            continue
    return found


def watchdog_of(pid):
    """graceexec's watchdog: its child running `graceexec __watchdog`."""
    return next((c for c, argv in children(pid) if argv[1:2] == [b"__watchdog"]), None)


def time_wait():
    """TCP sockets in TIME_WAIT (all namespaces' count, /proc/net/sockstat)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                words = line.split()
                return int(words[words.index("tw") + 1])
    return None


def serving(bin_dir, ge, control, addr):
    """graceexec's status once it is serving, else None; exits if it died."""
    if ge.poll() is not None:
        sys.exit(f"overhead: graceexec exited with status {ge.returncode}; is {addr} in use?")
    out = subprocess.run([f"{bin_dir}/graceexec", "status", "--control", control, "--json"],
                         capture_output=True, text=True)
    st = json.loads(out.stdout) if out.returncode == 0 else None
    return st if st and st.get("state") == "serving" else None


def summary(name, values_us, handover=None):
    v = sorted(values_us)
    p90 = v[min(len(v) - 1, int(len(v) * 0.9))]
    col = "" if handover is None else f" {handover} |"
    return (f"| {name} |{col} {len(v)} | {statistics.median(v):,.0f} µs | {p90:,.0f} µs "
            f"| {v[0]:,.0f} – {v[-1]:,.0f} µs |")
