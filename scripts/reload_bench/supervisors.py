"""The ways of running and reloading the same server: graceexec with each
generation on its own steered socket (its default) or with one shared
socket, Server::Starter, and stop + start.

Each supervisor starts in a session of its own (so a Ctrl-C on the terminal
reaches only the orchestrator, which then stops everything in order), logs
to one file, and acts without blocking the caller: the schedule is the same
wall-clock schedule for all of them. `verbs` is what a supervisor can do:
"reload" all of them; "canary" (a reload whose new generation gets 25% of
new connections) and "promote" only graceexec with steering.
"""

import queue
import re
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

from procs import stop_process


class Supervisor:
    key = ""
    label = ""
    verbs = frozenset({"reload"})

    def __init__(self, bin_dir: Path, addr: str, server: list[str], tmp: Path, log: Path):
        self.bin_dir, self.addr, self.server, self.tmp = bin_dir, addr, server, tmp
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115 (closed in stop())
        self.proc: subprocess.Popen | None = None

    def popen(self, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def reload(self) -> None:
        raise NotImplementedError

    def act(self, verb: str) -> None:
        if verb != "reload":
            raise ValueError(f"{self.label} cannot {verb}")
        self.reload()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, timeout=20)
        self.log.close()

    def servers_started(self) -> int:
        """Server processes started during the run, the first one included."""
        raise NotImplementedError

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class GraceExec(Supervisor):
    """graceexec --ready notify, with its default handover: each generation
    its own socket of a SO_REUSEPORT group, new connections steered to the
    ready new one, the old one stopped once it has nothing left.

    Its log lines are stamped with time.monotonic() as they arrive through
    a pipe (a thread per process reads it), so that `handovers()` can say
    how long each old generation waited for its stop signal."""

    key, label = "graceexec", "graceexec --handover steer"
    handover = "steer"
    verbs = frozenset({"reload", "canary", "promote"})
    CANARY_PCT = 25

    def popen(self, argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        pump = threading.Thread(target=self.stamp, args=(proc.stdout,), name="log-stamp", daemon=True)
        pump.start()
        self.pumps.append(pump)
        return proc

    def stamp(self, pipe) -> None:
        with pipe:
            for line in pipe:
                with self.log_lock:
                    self.log.write(b"%.6f " % time.monotonic() + line)
                    self.log.flush()

    def start(self) -> None:
        self.clients: list[subprocess.Popen] = []
        self.pumps: list[threading.Thread] = []
        self.log_lock = threading.Lock()
        self.proc = self.popen(
            [
                str(self.bin_dir / "graceexec"),
                "--name",
                "reload-bench",
                "--control",
                str(self.tmp / "control.sock"),
                "--listen",
                self.addr,
                "--handover",
                self.handover,
                "--ready",
                "notify",
                "--",
                *self.server,
            ]
        )

    def reload(self) -> None:
        # SIGHUP, as for start_server. (`graceexec reload` would wait for the
        # outcome, but it is a process to start, which the other two are
        # not; the outcome is in the log anyway.)
        if self.alive():
            self.proc.send_signal(signal.SIGHUP)

    def act(self, verb: str) -> None:
        if verb == "reload":
            return self.reload()
        if verb not in self.verbs:
            raise ValueError(f"{self.label} cannot {verb}")
        # A canary or a promotion has no signal: the client, left to run so
        # the schedule does not wait for it; its answer goes to the log.
        args = ["reload", "--canary", str(self.CANARY_PCT)] if verb == "canary" else ["promote"]
        control = str(self.tmp / "control.sock")
        self.clients.append(self.popen([str(self.bin_dir / "graceexec"), *args, "--control", control]))

    def stop(self) -> None:
        for client in getattr(self, "clients", []):
            stop_process(client, signal.SIGTERM, timeout=10)
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, timeout=20)
        # The pipes end with their processes (a leftover holding one is
        # killed by the orchestrator, after this returns: hence the bound).
        for pump in getattr(self, "pumps", []):
            pump.join(timeout=5)
        super().stop()

    def handovers(self) -> dict:
        """From the stamped log: the reloads graceexec saw, and per old
        generation the seconds from when new connections stopped going to it
        (the "new connections:" line that leaves it out; without steering,
        the next generation's "ready" line) to its "stopping with" line."""
        lines = []
        for raw in self.log_text().splitlines():
            stamp, _, text = raw.partition(" ")
            try:
                lines.append((float(stamp), text))
            except ValueError:
                continue
        steered = any("new connections:" in text for _, text in lines)
        away: dict[int, float] = {}
        getting: set[int] = set()
        waits = []
        for t, text in lines:
            if steered and (m := re.search(r"new connections: (.*)", text)):
                now = {int(g) for g in re.findall(r"generation (\d+)", m.group(1))}
                for gen in getting - now:
                    away.setdefault(gen, t)
                getting = now
            elif not steered and (m := re.search(r"generation (\d+) ready after", text)):
                for gen in getting:
                    away.setdefault(gen, t)
                getting = {int(m.group(1))}
            elif (m := re.search(r"generation (\d+) stopping with", text)) and int(m.group(1)) in away:
                waits.append(t - away.pop(int(m.group(1))))
        seen = len(re.findall(r"reload requested", self.log_text()))
        summary = {"reloads_seen": seen, "drain_waits_s": [round(w, 4) for w in waits]}
        if waits:
            ordered = sorted(waits)
            summary["drain_wait_median_s"] = round(statistics.median(ordered), 4)
            summary["drain_wait_p90_s"] = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 4)
            summary["drain_wait_max_s"] = round(ordered[-1], 4)
        return summary

    def clients_failed(self) -> int:
        return sum(1 for c in getattr(self, "clients", []) if c.returncode != 0)

    def reloads_failed(self) -> int:
        return len(re.findall(r"reload failed:", self.log_text()))

    def servers_started(self) -> int:
        return len(re.findall(r"generation \d+ started as pid", self.log_text()))


class GraceExecShared(GraceExec):
    """graceexec --handover shared: one listening socket for every
    generation, the old one stopped as soon as the new one is ready (how
    graceexec worked before steering, and how the peers work)."""

    key, label = "graceexec-shared", "graceexec --handover shared"
    handover = "shared"
    verbs = frozenset({"reload"})


class ServerStarter(Supervisor):
    """Perl's Server::Starter: a reload (SIGHUP) starts a new worker, waits
    --interval (1 s by default) and then sends SIGTERM to the old one."""

    key, label = "server-starter", "start_server (Server::Starter)"

    def start(self) -> None:
        self.proc = self.popen(["start_server", f"--port={self.addr}", "--", *self.server])

    def reload(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGHUP)

    def servers_started(self) -> int:
        return len(re.findall(r"^starting new worker", self.log_text(), re.M))


class Naive(Supervisor):
    """Stop, then start: SIGTERM the server, wait for it to exit, start a new
    one that binds the port itself. Like supervisord's autorestart, a server
    that dies on its own is started again after a second."""

    key, label = "naive", "stop + start"
    RESPAWN_DELAY = 1.0
    MAX_STARTS = 200

    def start(self) -> None:
        self.requests: queue.Queue[str] = queue.Queue()
        self.starts = 0
        self.spawn()
        self.thread = threading.Thread(target=self.manage, name="naive-supervisor", daemon=True)
        self.thread.start()

    def spawn(self) -> None:
        if self.starts < self.MAX_STARTS:
            self.starts += 1
            self.proc = self.popen([*self.server, "--bind", self.addr])

    def manage(self) -> None:
        died_at = None
        while True:
            try:
                request = self.requests.get(timeout=0.02)
            except queue.Empty:
                request = None
            if request == "stop":
                return
            if request == "reload":
                stop_process(self.proc, signal.SIGTERM, timeout=30)
                self.spawn()
                died_at = None
            elif self.proc.poll() is not None:
                died_at = died_at or time.monotonic()
                if time.monotonic() - died_at >= self.RESPAWN_DELAY:
                    self.spawn()
                    died_at = None

    def reload(self) -> None:
        self.requests.put("reload")

    def stop(self) -> None:
        self.requests.put("stop")
        self.thread.join(timeout=60)
        super().stop()

    def servers_started(self) -> int:
        return self.starts


SUPERVISORS = {cls.key: cls for cls in (GraceExec, GraceExecShared, ServerStarter, Naive)}
