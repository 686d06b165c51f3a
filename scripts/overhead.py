#!/usr/bin/env python3
"""What graceexec itself adds to a reload, and what it costs while idle.

Run through scripts/overhead.sh, which builds the release binaries. It runs
graceexec with --ready notify over examples/timing.rs, a server that sends
READY=1 as soon as it starts and logs CLOCK_MONOTONIC timestamps, then:

1. sends SIGHUP RELOADS times, one after the other, and reads
   - request -> exec: from SIGHUP sent to the candidate's main();
   - READY=1 -> stop: from the candidate's READY=1 to the old generation
     receiving its SIGTERM;
2. times the `graceexec reload` client's round trip ROUND_TRIPS times;
   For scale, the same binary started RELOADS times by os.posix_spawn
   (this script, no graceexec): posix_spawn -> main(). That is what exec,
   the dynamic loader and Rust's start-up cost on this machine; the
   difference is graceexec's own share;
3. reads graceexec's RSS, then its CPU ticks and context switches over
   IDLE_SECONDS of idling (the aim is zero wake-ups), and for scale the RSS
   of Server::Starter's start_server holding the same address, if it is
   installed.

time.monotonic_ns() reads the same CLOCK_MONOTONIC as the server.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

def env_number(key, default, kind, low, high):
    raw = os.environ.get(key, default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        sys.exit(f"overhead: {key}={raw}: want a number from {low} to {high}")
    return value


BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release"
RELOADS = env_number("RELOADS", "200", int, 1, 100_000)
ROUND_TRIPS = env_number("ROUND_TRIPS", "30", int, 1, 10_000)
IDLE_SECONDS = env_number("IDLE_SECONDS", "10", float, 0.1, 3600)
ADDR = os.environ.get("ADDR", "127.0.0.1:18095")
if not (ADDR.startswith("127.") or ADDR.startswith("[::1]:")):
    sys.exit(f"overhead: ADDR={ADDR}: want a loopback address, 127.x.x.x:PORT or [::1]:PORT")
DEADLINE = 10.0
GE = None  # the graceexec under test, once started


def wait_until(what, cond, timeout=DEADLINE):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.001)
    sys.exit(f"overhead: timed out waiting for {what}")


def lines(path):
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


def spawn_baseline(work):
    """posix_spawn -> main() of the timing server, without graceexec."""
    log = os.path.join(work, "baseline.log")
    sock_path = os.path.join(work, "baseline-notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(DEADLINE)
    env = dict(os.environ, TIMING_LOG=log, NOTIFY_SOCKET=sock_path)
    starts = []
    try:
        for _ in range(RELOADS):
            starts.append(time.monotonic_ns())
            pid = os.posix_spawn(f"{BIN}/examples/timing", ["timing"], env)
            notify.recv(64)  # READY=1: it is past main()
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    finally:
        notify.close()
    return [(rec[1] - t) / 1000 for rec, t in zip(lines(log), starts)]


def start_server_rss():
    """VmRSS of Server::Starter's start_server, once its worker runs."""
    if shutil.which("start_server") is None:
        return None
    proc = subprocess.Popen(["start_server", f"--port={ADDR}", "--", "sleep", "600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def worker():
        if proc.poll() is not None:
            sys.exit(f"overhead: start_server exited with status {proc.returncode}")
        return children(proc.pid)

    try:
        wait_until("start_server's worker", worker)
        return proc_status(proc.pid)["VmRSS"]
    finally:
        proc.terminate()  # start_server passes TERM on to its worker
        proc.wait(timeout=DEADLINE)


def summary(name, values_us):
    v = sorted(values_us)
    p90 = v[min(len(v) - 1, int(len(v) * 0.9))]
    return (f"| {name} | {len(v)} | {statistics.median(v):,.0f} µs | {p90:,.0f} µs "
            f"| {v[0]:,.0f} – {v[-1]:,.0f} µs |")


def main():
    # SIGTERM's default kills Python at once, skipping the finally below
    # that stops graceexec: make it unwind like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="graceexec-overhead-")
    log = os.path.join(work, "timing.log")
    control = os.path.join(work, "ctl.sock")
    env = dict(os.environ, TIMING_LOG=log)
    ge = subprocess.Popen(
        [f"{BIN}/graceexec", "--listen", ADDR, "--name", "overhead", "--control", control,
         "--ready", "notify", "-q", "--", f"{BIN}/examples/timing"],
        env=env)
    try:
        run(ge, log, control)
    finally:
        if ge.poll() is None:
            ge.send_signal(signal.SIGTERM)
            ge.wait(timeout=DEADLINE)
        shutil.rmtree(work, ignore_errors=True)


def status(control):
    out = subprocess.run([f"{BIN}/graceexec", "status", "--control", control, "--json"],
                         capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def serving(control):
    if GE is not None and GE.poll() is not None:
        sys.exit(f"overhead: graceexec exited with status {GE.returncode}; is {ADDR} in use?")
    st = status(control)
    return st if st and st.get("state") == "serving" else None


def run(ge, log, control):
    global GE
    GE = ge
    wait_until("the first generation", lambda: serving(control))

    requests = []
    for i in range(RELOADS):
        requests.append(time.monotonic_ns())
        ge.send_signal(signal.SIGHUP)
        # Generation i has been told to stop once it has logged its line.
        wait_until(f"reload {i + 1}", lambda: len(lines(log)) >= i + 1)
    wait_until("the last reload to settle", lambda: serving(control))

    trips = []
    trips_started = time.monotonic_ns()
    for _ in range(ROUND_TRIPS):
        start = time.monotonic_ns()
        subprocess.run([f"{BIN}/graceexec", "reload", "--control", control],
                       check=True, stdout=subprocess.DEVNULL)
        trips.append((time.monotonic_ns() - start) / 1000)

    dog = watchdog_of(ge.pid)
    watched = [ge.pid] + ([dog] if dog else [])
    rss = [proc_status(p)["VmRSS"] for p in watched]
    ticks = [cpu_ticks(p) for p in watched]
    ctx = [switches(p) for p in watched]
    time.sleep(IDLE_SECONDS)  # the measurement itself: graceexec left alone
    idle_ticks = [cpu_ticks(p) - t for p, t in zip(watched, ticks)]
    idle_ctx = [switches(p) - c for p, c in zip(watched, ctx)]

    ge.send_signal(signal.SIGTERM)
    ge.wait(timeout=DEADLINE)
    baseline = spawn_baseline(os.path.dirname(log))
    starter_rss = start_server_rss()
    records = sorted(lines(log), key=lambda r: r[1])  # by main() time
    # One generation per reload, and each one's main() between its SIGHUP and
    # the next: anything else (a lost or doubled reload, a restart) would pair
    # a request with the wrong generation.
    if len(records) != 1 + RELOADS + ROUND_TRIPS:
        sys.exit(f"overhead: {len(records)} generations logged, expected {1 + RELOADS + ROUND_TRIPS}")
    gens = records[: RELOADS + 1]
    bounds = requests + [trips_started]
    to_exec, to_stop = [], []
    for k in range(1, len(gens)):
        _, main, ready, _ = gens[k]
        if not bounds[k - 1] <= main < bounds[k]:
            sys.exit(f"overhead: generation {k + 1} did not start between reload {k} and the next")
        to_exec.append((main - requests[k - 1]) / 1000)
        to_stop.append((gens[k - 1][3] - ready) / 1000)

    print(f"graceexec {ADDR}, {RELOADS} reloads by SIGHUP, {ROUND_TRIPS} by the client\n")
    print("| | n | median | p90 | range |")
    print("|---|---|---|---|---|")
    print(summary("SIGHUP → candidate's main()", to_exec))
    print(summary("for scale: os.posix_spawn → main(), no graceexec", baseline))
    print(summary("candidate's READY=1 → old generation gets SIGTERM", to_stop))
    print(summary("`graceexec reload` round trip", trips))
    names = ["graceexec", "its watchdog"]
    print(f"\nafter {RELOADS + ROUND_TRIPS} reloads, then idle for {IDLE_SECONDS:g} s:\n")
    print("| process | RSS | CPU ticks while idle | context switches while idle |")
    print("|---|---|---|---|")
    for name, r, t, c in zip(names, rss, idle_ticks, idle_ctx):
        print(f"| {name} | {r} | {t} | {c} |")
    if starter_rss is not None:
        print(f"| for scale: start_server (Server::Starter) | {starter_rss} | | |")
    if dog is None:
        print("(no watchdog found)")


if __name__ == "__main__":
    main()
