"""When graceexec switches the steering program and signals the old
generation, seen from outside: the syscall tracepoints of graceexec's
process, recorded by `perf record` (no ptrace, so graceexec is not stopped
at each syscall as under strace; a tracepoint costs well under a
microsecond), with CLOCK_MONOTONIC timestamps, the clock of the timing
server's READY=1 timestamp. Used by overhead.py.

Recorded, for graceexec's pid only:
- sys_exit_recvmsg: graceexec read a datagram (READY=1) from a notify socket;
- sys_enter/sys_exit_setsockopt: with optname SO_ATTACH_REUSEPORT_CBPF (51),
  the steering program replaced in one call;
- sys_enter_kill: with signal 15, the stop signal sent to a generation;
- sys_enter/sys_exit_poll: graceexec's event loop sleeps in poll(2), so from
  one poll's return to the next poll is one turn of the loop, the time it
  was deaf to signals, children and the control socket.
perf follows the children too (the generations); only graceexec's own
thread is kept.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile

SO_ATTACH_REUSEPORT_CBPF = 51
SIGTERM = 15
EVENTS = ["syscalls:sys_exit_recvmsg", "syscalls:sys_enter_setsockopt",
          "syscalls:sys_exit_setsockopt", "syscalls:sys_enter_kill",
          "syscalls:sys_enter_poll", "syscalls:sys_exit_poll"]
LINE = re.compile(r"^\s*(\d+)\s+(\d+)\.(\d+):\s+syscalls:(\w+):\s*(.*)$")


def unavailable():
    """Why perf cannot record syscall tracepoints here, or None."""
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: linux-perf)"
    if os.geteuid() != 0:
        return "recording syscall tracepoints of another process needs root"
    return None


class Trace:
    """perf record attached to one pid, started disabled; `enable()` returns
    once perf acknowledges, so nothing before it is missed or mixed in."""

    def __init__(self, pid):
        self.pid = pid
        self.dir = tempfile.mkdtemp(prefix="graceexec-overhead-perf-")
        self.data = os.path.join(self.dir, "perf.data")
        ctl, ack = os.path.join(self.dir, "ctl"), os.path.join(self.dir, "ack")
        os.mkfifo(ctl)
        os.mkfifo(ack)
        argv = ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-p", str(pid), "-D", "-1",
                "--control", f"fifo:{ctl},{ack}", "-o", self.data]
        for event in EVENTS:
            argv += ["-e", event]
        self.log = open(os.path.join(self.dir, "perf.log"), "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        # Opening a fifo blocks until the other end opens it: perf opens
        # both once it is set up. O_RDWR on the ack fifo would not wait.
        self.ctl = open(ctl, "w")  # noqa: SIM115
        self.ack = open(ack)  # noqa: SIM115

    def command(self, what):
        self.ctl.write(what + "\n")
        self.ctl.flush()
        # perf writes the C string "ack\n" with its NUL.
        got = self.ack.readline().strip("\0\n ")
        if got != "ack":
            raise RuntimeError(f"perf answered {got!r} to {what}")

    def enable(self):
        self.command("enable")

    def stop(self):
        """Stops recording; returns the events, each (time_ns, name, fields)."""
        try:
            self.command("disable")
        finally:
            self.ctl.close()
            self.ack.close()
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)
            self.log.close()
        out = subprocess.run(["perf", "script", "-i", self.data, "-F", "tid,time,event,trace", "--ns"],
                             capture_output=True, text=True, check=True).stdout
        shutil.rmtree(self.dir, ignore_errors=True)
        return [ev[1:] for ev in map(parse, out.splitlines()) if ev and ev[0] == self.pid]


def parse(line):
    m = LINE.match(line)
    if not m:
        return None
    t = int(m.group(2)) * 1_000_000_000 + int(m.group(3).ljust(9, "0")[:9])
    fields = {}
    for key, value in re.findall(r"(\w+): (0x[0-9a-f]+)", m.group(5)):
        fields[key] = int(value, 16)
    if m.group(4).startswith("sys_exit"):
        # "sys_exit_recvmsg: 0x7": the return value, as an unsigned 64-bit number.
        ret = int(m.group(5).strip(), 16)
        fields["ret"] = ret - (1 << 64) if ret >= 1 << 63 else ret
    return int(m.group(1)), t, m.group(4), fields


def switches(events, reloads):
    """reloads: (READY=1 time of the new generation, pid of the old one).
    For each: (ready, read, attach_enter, attach_exit, sigterm) in ns,
    None where an event is missing, from the first matching event after
    its READY=1. reloads must be in order."""
    events = sorted(events)
    out = []
    bounds = [r for r, _ in reloads[1:]] + [float("inf")]
    for (ready, old_pid), until in zip(reloads, bounds):
        # Only up to the next reload's READY=1: a missing event must not
        # be taken from the next reload.
        after = [e for e in events if ready <= e[0] < until]
        read = next((t for t, name, f in after if name == "sys_exit_recvmsg" and f["ret"] > 0), None)
        enter = exit_ = None
        for k, (t, name, f) in enumerate(after):
            if name == "sys_enter_setsockopt" and f.get("optname") == SO_ATTACH_REUSEPORT_CBPF:
                enter = t
                exit_ = next((t2 for t2, n2, _ in after[k + 1:] if n2 == "sys_exit_setsockopt"), None)
                break
        term = next((t for t, name, f in after
                     if name == "sys_enter_kill" and f.get("sig") == SIGTERM and f.get("pid") == old_pid), None)
        out.append((ready, read, enter, exit_, term))
    return out


def loop_turns(events):
    """Microseconds from each poll's return to the next poll call."""
    turns, back = [], None
    for t, name, _ in sorted(events):
        if name == "sys_exit_poll":
            back = t
        elif name == "sys_enter_poll" and back is not None:
            turns.append((t - back) / 1000)
            back = None
    return turns
