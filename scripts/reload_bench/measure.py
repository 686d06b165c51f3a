"""Load (wrk with record.lua), the sequential probe, and what they saw.

All timestamps are CLOCK_MONOTONIC seconds: time.monotonic() here, and
clock_gettime(CLOCK_MONOTONIC) through LuaJIT's ffi in record.lua.
"""

import json
import math
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRK_TIMEOUT_S = 5  # comfortably above the longest request (3 s)
PROBE_TIMEOUT_S = 0.25
PROBE_PAUSE_S = 0.02
PROBE_MAX = 100_000


def start_wrk(addr: str, out_dir: Path, clients: int, stop_at: float, seconds: float, tag: str):
    """wrk with one connection per request; sends until stop_at, exits after seconds."""
    argv = [
        "wrk",
        "-t",
        "2",
        "-c",
        str(clients),
        "-d",
        f"{math.ceil(seconds)}s",
        "--timeout",
        f"{WRK_TIMEOUT_S}s",
        "-H",
        "Connection: close",
        "-H",
        f"X-Bench: {tag}",
        "-s",
        str(HERE / "record.lua"),
        f"http://{addr}/",
        "--",
        str(out_dir),
        f"{stop_at:.6f}",
    ]
    with open(out_dir / "wrk.out", "wb") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


class Probe(threading.Thread):
    """One GET /ping at a time, each on a new connection with a short timeout,
    until stop_at (and at most PROBE_MAX); remembers when answers arrived."""

    def __init__(self, addr: str, stop_at: float):
        super().__init__(name="probe", daemon=True)
        host, port = addr.rsplit(":", 1)
        self.target = (host, int(port))
        self.stop_at = stop_at
        self.answers: list[float] = []
        self.attempts = 0
        self.log: list[str] = []  # per attempt: start, end, outcome
        self.idle = 0.0  # the longest time between one attempt's end and the next one's start

    def run(self) -> None:
        while time.monotonic() < self.stop_at and self.attempts < PROBE_MAX:
            self.attempts += 1
            start = time.monotonic()
            outcome = self.ask()
            end = time.monotonic()
            if outcome.startswith("ok"):
                self.answers.append(end)
            self.log.append(f"{start:.6f}\t{end:.6f}\t{outcome}")
            time.sleep(PROBE_PAUSE_S)
            self.idle = max(self.idle, time.monotonic() - end)

    def ask(self) -> str:
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        data = b""
        try:
            with socket.create_connection(self.target, timeout=PROBE_TIMEOUT_S) as s:
                s.sendall(b"GET /ping HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                while (left := deadline - time.monotonic()) > 0:
                    s.settimeout(left)
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except OSError as e:
            return f"error {type(e).__name__}: {e}"
        if not data.startswith(b"HTTP/1.1 200 "):
            return "closed without an answer" if not data else "bad answer"
        pid = re.search(rb"X-Pid: (\d+)", data)
        return f"ok {pid.group(1).decode() if pid else '-'}"


def longest_gap(answers: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest stretch of [start, end] without an answer, edges included."""
    points = [start, *sorted(t for t in answers if start <= t <= end), end]
    best = max(zip(points, points[1:]), key=lambda p: p[1] - p[0])
    return best


@dataclass
class Outcome:
    sent: int = 0
    # wrk sends at once again on a connection that failed, without asking
    # record.lua's delay(): while the server refuses, requests (and failures)
    # go on after the window, until wrk exits. They are counted; this says
    # how many there were.
    sent_late: int = 0
    answered: int = 0  # 2xx, in time or not
    errors: dict[str, int] = field(default_factory=dict)
    pids: list[tuple[int, int]] = field(default_factory=list)  # (pid, answers), first served first
    gap: tuple[float, float] = (0.0, 0.0)  # relative to the load start
    probe_attempts: int = 0
    probe_answers: int = 0
    probe_idle: float = 0.0  # >> PROBE_PAUSE_S: the probe itself was not scheduled
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (t, pid) per 2xx answer

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def gap_s(self) -> float:
        return self.gap[1] - self.gap[0]


ERROR_CLASSES = ["connect", "read", "write", "timeout", "non-2xx", "no answer"]


def analyse(out_dir: Path, t0: float, probe: Probe, window: float) -> Outcome:
    """Reads wrk's counters and record.lua's per-thread files."""
    wrk_text = (out_dir / "wrk.out").read_text(errors="replace")
    found = re.search(r"^BENCH (\{.*\})$", wrk_text, re.M)
    if not found:
        raise RuntimeError(f"wrk printed no summary; see {out_dir / 'wrk.out'}")
    wrk = json.loads(found.group(1))
    files = sorted(out_dir.glob("thread-*.tsv"))
    if not files:
        raise RuntimeError(f"record.lua wrote nothing (a wrk without LuaJIT?); see {out_dir / 'wrk.out'}")

    sent: set[str] = set()
    answered_ids: set[str] = set()
    timeline = []
    non_2xx = 0
    late = 0  # sent after the window: see Outcome.sent_late
    for path in files:
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if parts[0] == "S":
                sent.add(parts[2])
                late += float(parts[1]) - t0 >= window
            elif parts[0] == "R" and len(parts) == 5:
                answered_ids.add(parts[2])
                if parts[3].startswith("2") and parts[4].isdigit():
                    timeline.append((float(parts[1]) - t0, int(parts[4])))
                else:
                    non_2xx += 1

    unanswered = len(sent - answered_ids)
    errors = {
        "connect": wrk["connect"],
        "read": wrk["read"],
        "write": wrk["write"],
        # wrk: answers that came after --timeout.
        "timeout": wrk["timeout"],
        # Not wrk's "status" count, which is only of statuses above 399.
        "non-2xx": non_2xx,
        # Sent, never answered, and not one of wrk's read or write errors
        # (wrk 4.1 counts a close before the answer as a read error): a
        # connection still waiting in a queue nobody serves when wrk stopped.
        "no answer": max(0, unanswered - wrk["read"] - wrk["write"]),
    }
    per_pid = Counter(pid for _, pid in timeline)
    first = {}
    for t, pid in sorted(timeline):
        first.setdefault(pid, t)
    pids = [(pid, per_pid[pid]) for pid in sorted(first, key=first.get)]
    gap = longest_gap(probe.answers, t0, t0 + window)
    return Outcome(
        sent=len(sent),
        sent_late=late,
        answered=len(timeline),
        errors=errors,
        pids=pids,
        gap=(gap[0] - t0, gap[1] - t0),
        probe_attempts=probe.attempts,
        probe_answers=len(probe.answers),
        probe_idle=probe.idle,
        timeline=timeline,
    )
