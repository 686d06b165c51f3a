#!/usr/bin/env python3
"""What graceexec itself adds to a reload, and what it costs while idle.

Run through scripts/overhead.sh, which builds the release binaries. It runs
graceexec with --ready notify over examples/timing.rs, a server that sends
READY=1 as soon as it starts and logs CLOCK_MONOTONIC timestamps, once with
--handover steer (the default: each generation its own socket, the old one
signalled once it has nothing left) and once with --handover shared (one
socket, the old one signalled at once), and for each:

1. sends SIGHUP RELOADS times, one after the other, and reads
   - request -> exec: from SIGHUP sent to the candidate's main();
   - READY=1 -> stop: from the candidate's READY=1 to the old generation
     receiving its SIGTERM (idle: nothing to drain);
2. with steer, TRACE_RELOADS more with perf recording graceexec's syscalls
   (overhead_trace.py): READY=1 -> the steering program attached (the
   setsockopt returns), split into READY=1 -> graceexec has read it,
   read -> setsockopt, and the setsockopt itself; then program attached ->
   SIGTERM sent (the drain check of an idle generation);
3. times the `graceexec reload` client's round trip ROUND_TRIPS times;
4. under a light load (examples/load.rs, LOAD_CLIENTS clients, a new
   connection per request, each answered after 0-20 ms by the timing
   server in TIMING_SERVE_MS mode), LOADED_RELOADS reloads, LOAD_PAUSE
   apart: READY=1 -> the old generation gets SIGTERM (with steer this is the
   drain wait), SIGTERM -> the old generation has finished (the server's
   own drain), and the requests that failed.
For scale, the same binary started RELOADS times by os.posix_spawn (this
script, no graceexec): posix_spawn -> main(). Last, with steer: graceexec's
RSS, its CPU ticks and context switches over IDLE_SECONDS of idling (the
aim is zero wake-ups), and the RSS of Server::Starter's start_server
holding the same address, if it is installed.

The TIME_WAIT count (/proc/net/sockstat) is printed with each part: the
drain check reads /proc/net/tcp, whose length grows with it.
time.monotonic_ns() reads the same CLOCK_MONOTONIC as the server and perf.
"""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import overhead_trace as trace
from overhead_util import (children, cpu_ticks, env_number, lines, proc_status, serving, summary,
                           switches, time_wait, wait_until, watchdog_of)

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release"
RELOADS = env_number("RELOADS", "200", int, 1, 100_000)
TRACE_RELOADS = env_number("TRACE_RELOADS", "100", int, 0, 100_000)
ROUND_TRIPS = env_number("ROUND_TRIPS", "30", int, 1, 10_000)
LOADED_RELOADS = env_number("LOADED_RELOADS", "30", int, 0, 10_000)
LOAD_CLIENTS = env_number("LOAD_CLIENTS", "4", int, 1, 64)
LOAD_PAUSE = env_number("LOAD_PAUSE", "0.2", float, 0.0, 10)
IDLE_SECONDS = env_number("IDLE_SECONDS", "10", float, 0.1, 3600)
ADDR = os.environ.get("ADDR", "127.0.0.1:18095")
if not (ADDR.startswith("127.") or ADDR.startswith("[::1]:")):
    sys.exit(f"overhead: ADDR={ADDR}: want a loopback address, 127.x.x.x:PORT or [::1]:PORT")
HANDOVERS = ["steer", "shared"]
DEADLINE = 10.0


def start(work, handover, name, env_extra=None):
    log = os.path.join(work, f"{name}.log")
    control = os.path.join(work, f"{name}.sock")
    env = dict(os.environ, TIMING_LOG=log, **(env_extra or {}))
    ge = subprocess.Popen(
        [f"{BIN}/graceexec", "--listen", ADDR, "--name", f"overhead-{name}", "--control", control,
         "--handover", handover, "--ready", "notify", "-q", "--", f"{BIN}/examples/timing"],
        env=env)
    wait_until("the first generation", lambda: serving(BIN, ge, control, ADDR))
    return ge, log, control


def stop(ge):
    if ge.poll() is None:
        ge.send_signal(signal.SIGTERM)
        ge.wait(timeout=DEADLINE)


def sighup_reloads(ge, log, count, first):
    """count reloads by SIGHUP; each waits for the old generation's line
    (its stop signal arrived). Returns when each SIGHUP was sent."""
    sent = []
    for i in range(count):
        sent.append(time.monotonic_ns())
        ge.send_signal(signal.SIGHUP)
        n = first + i + 1
        wait_until(f"reload {n}", lambda n=n: len(lines(log)) >= n)
    return sent


def check_order(records, requests, end):
    """One generation per reload, and each one's main() between its SIGHUP
    and the next: anything else (a lost or doubled reload, a restart) would
    pair a request with the wrong generation."""
    bounds = requests + [end]
    for k in range(1, len(records)):
        if not bounds[k - 1] <= records[k][1] < bounds[k]:
            sys.exit(f"overhead: generation {k + 1} did not start between reload {k} and the next")


def idle_part(work, handover, out):
    ge, log, control = start(work, handover, handover)
    try:
        out["tw_idle"] = time_wait()
        requests = sighup_reloads(ge, log, RELOADS, 0)
        wait_until("the last reload to settle", lambda: serving(BIN, ge, control, ADDR))
        events, traced = None, []
        if handover == "steer" and TRACE_RELOADS and not out.get("no_trace"):
            tr = trace.Trace(ge.pid)
            try:
                tr.enable()
                traced = sighup_reloads(ge, log, TRACE_RELOADS, RELOADS)
                wait_until("the last traced reload to settle", lambda: serving(BIN, ge, control, ADDR))
            finally:
                events = tr.stop()
        trips_started = time.monotonic_ns()
        trips = []
        for _ in range(ROUND_TRIPS):
            t = time.monotonic_ns()
            subprocess.run([f"{BIN}/graceexec", "reload", "--control", control],
                           check=True, stdout=subprocess.DEVNULL)
            trips.append((time.monotonic_ns() - t) / 1000)
        if handover == "steer":
            # The last reload's old generation first: with steer, its drain
            # check runs after the client has its answer.
            done = 1 + RELOADS + len(traced) + ROUND_TRIPS - 1
            wait_until("the last old generation to stop", lambda: len(lines(log)) >= done)
            out.update(idle_costs(ge))
    finally:
        stop(ge)
    records = sorted(lines(log), key=lambda r: r[1])  # by main() time
    expected = 1 + RELOADS + len(traced) + ROUND_TRIPS
    if len(records) != expected:
        sys.exit(f"overhead: {handover}: {len(records)} generations logged, expected {expected}")
    gens = records[: RELOADS + len(traced) + 1]
    check_order(gens, requests + traced, trips_started)
    sent = requests + traced
    out["to_exec"] = [(gens[k][1] - sent[k - 1]) / 1000 for k in range(1, RELOADS + 1)]
    out["to_stop"] = [(gens[k - 1][3] - gens[k][2]) / 1000 for k in range(1, RELOADS + 1)]
    out["trips"] = trips
    if events is not None:
        reloads = [(gens[k][2], gens[k - 1][0]) for k in range(RELOADS + 1, len(gens))]
        out["switches"] = trace.switches(events, reloads)
        out["turns_idle"] = trace.loop_turns(events)


def idle_costs(ge):
    dog = watchdog_of(ge.pid)
    watched = [ge.pid] + ([dog] if dog else [])
    rss = [proc_status(p)["VmRSS"] for p in watched]
    ticks = [cpu_ticks(p) for p in watched]
    ctx = [switches(p) for p in watched]
    time.sleep(IDLE_SECONDS)  # the measurement itself: graceexec left alone
    return {"rss": rss, "idle_ticks": [cpu_ticks(p) - t for p, t in zip(watched, ticks)],
            "idle_ctx": [switches(p) - c for p, c in zip(watched, ctx)], "watchdog": dog is not None}


def loaded_part(work, handover, out):
    name = f"{handover}-loaded"
    ge, log, control = start(work, handover, name, {"TIMING_SERVE_MS": "0-20"})
    stop_file = os.path.join(work, f"{name}.stop")
    seconds = LOADED_RELOADS * (LOAD_PAUSE + 2) + 10  # a bound; the stop file ends it sooner
    tr = None if out.get("no_trace") else trace.Trace(ge.pid)
    load = subprocess.Popen([f"{BIN}/examples/load", "--addr", ADDR, "--clients", str(LOAD_CLIENTS),
                             "--seconds", str(seconds), "--max-requests", "1000000",
                             "--stop-file", stop_file], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(LOAD_PAUSE)  # part of the load profile: requests in flight before the first reload
        out["tw_load"] = time_wait()
        if tr:
            tr.enable()
        for i in range(LOADED_RELOADS):
            ge.send_signal(signal.SIGHUP)
            wait_until(f"loaded reload {i + 1}", lambda n=i + 1: len(lines(log)) >= n)
            time.sleep(LOAD_PAUSE)
    finally:
        events = tr.stop() if tr else None
        open(stop_file, "w").close()
        report = load.communicate(timeout=60)[0]
        stop(ge)
    if events is not None:
        out["turns_load"] = trace.loop_turns(events)
    records = sorted(lines(log), key=lambda r: r[1])
    if len(records) != 1 + LOADED_RELOADS:
        sys.exit(f"overhead: {name}: {len(records)} generations logged, expected {1 + LOADED_RELOADS}")
    pairs = list(zip(records, records[1:]))
    out["load_to_stop"] = [(old[3] - new[2]) / 1000 for old, new in pairs]
    out["load_drain"] = [(old[4] - old[3]) / 1000 for old, _ in pairs]
    out["load_to_exit"] = [(old[4] - new[2]) / 1000 for old, new in pairs]
    counts = dict(line.split(": ", 1) for line in report.splitlines() if ": " in line)
    out["load_ok"] = counts.get("requests served", "?")
    out["load_failed"] = counts.get("requests failed", "?")


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

    workers = []
    try:
        workers = wait_until("start_server's worker", worker)
        return proc_status(proc.pid)["VmRSS"]
    finally:
        proc.terminate()  # start_server passes TERM on to its worker
        try:
            proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            # Seen once in ten runs: start_server sat on its TERM. Only a
            # figure for scale: end it and its worker, by pid.
            print("overhead: start_server ignored SIGTERM; killed", file=sys.stderr)
            for pid, _ in workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.kill()
            proc.wait(timeout=DEADLINE)


def print_switches(rows):
    done = [r for r in rows if None not in r]
    print(f"\nwith steer, {len(rows)} reloads traced by perf ({len(rows) - len(done)} with an event missing):\n")
    if not done:
        return
    print("| | n | median | p90 | range |")
    print("|---|---|---|---|---|")
    us = [[(b - a) / 1000 for a, b in pairs] for pairs in zip(*[
        [(r[0], r[3]), (r[0], r[1]), (r[1], r[2]), (r[2], r[3]), (r[3], r[4])] for r in done])]
    names = ["**candidate's READY=1 → steering program attached** (setsockopt returned)",
             "… of which READY=1 sent → graceexec has read it (recvmsg returned)",
             "… of which READY=1 read → setsockopt called (graceexec's own work)",
             "… of which the setsockopt itself (SO_ATTACH_REUSEPORT_CBPF)",
             "program attached → SIGTERM sent (drain check of an idle generation)"]
    for name, values in zip(names, us):
        print(summary(name, values))


def print_turns(results):
    """graceexec's event loop: how long it went without polling."""
    parts = [("steer", "turns_idle", "idle, the traced reloads"), ("steer", "turns_load", "under load"),
             ("shared", "turns_load", "under load")]
    rows = [(h, what, results[h][key]) for h, key, what in parts if results[h].get(key)]
    if not rows:
        return
    print("\ngraceexec's event loop, from one poll() returning to the next poll() (perf):\n")
    print("| handover | during | turns | median | p99 | longest | turns over 10 ms |")
    print("|---|---|---|---|---|---|---|")
    for h, what, turns in rows:
        v = sorted(turns)
        print(f"| {h} | {what} | {len(v)} | {statistics.median(v):,.0f} µs | "
              f"{v[min(len(v) - 1, int(len(v) * 0.99))]:,.0f} µs | {v[-1]:,.0f} µs "
              f"| {sum(t > 10_000 for t in v)} |")


def main():
    # SIGTERM's default kills Python at once, skipping the finally blocks
    # that stop graceexec: make it unwind like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="graceexec-overhead-")
    why_not = trace.unavailable()
    results = {h: {"no_trace": why_not is not None} for h in HANDOVERS}
    try:
        for h in HANDOVERS:
            idle_part(work, h, results[h])
        if LOADED_RELOADS:
            for h in HANDOVERS:
                loaded_part(work, h, results[h])
        baseline = spawn_baseline(work)
        starter_rss = start_server_rss()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    steer, shared = results["steer"], results["shared"]
    print(f"graceexec {ADDR}, per handover: {RELOADS} reloads by SIGHUP, {ROUND_TRIPS} by the client; "
          f"TIME_WAIT sockets: {steer['tw_idle']} (steer), {shared['tw_idle']} (shared)\n")
    print("| | handover | n | median | p90 | range |")
    print("|---|---|---|---|---|---|")
    for key, name in [("to_exec", "SIGHUP → candidate's main()"),
                      ("to_stop", "candidate's READY=1 → old generation gets SIGTERM (idle)"),
                      ("trips", "`graceexec reload` round trip")]:
        for h in HANDOVERS:
            print(summary(name, results[h][key], h))
    print(summary("for scale: os.posix_spawn → main(), no graceexec", baseline, "-"))
    if why_not:
        print(f"\nready → program switched: not measured ({why_not})")
    elif "switches" in steer:
        print_switches(steer["switches"])
    if LOADED_RELOADS:
        print(f"\nunder load: {LOAD_CLIENTS} clients, a new connection per request, each answered after "
              f"0–20 ms; {LOADED_RELOADS} reloads {LOAD_PAUSE:g} s apart; TIME_WAIT sockets: "
              f"{steer['tw_load']} (steer), {shared['tw_load']} (shared)\n")
        print("| | handover | n | median | p90 | range |")
        print("|---|---|---|---|---|---|")
        for key, name in [("load_to_stop", "candidate's READY=1 → old generation gets SIGTERM"),
                          ("load_drain", "old generation gets SIGTERM → has answered all it accepted"),
                          ("load_to_exit", "candidate's READY=1 → old generation done")]:
            for h in HANDOVERS:
                print(summary(name, results[h][key], h))
        print("\n| handover | requests answered | failed |")
        print("|---|---|---|")
        for h in HANDOVERS:
            print(f"| {h} | {results[h]['load_ok']} | {results[h]['load_failed']} |")
    print_turns(results)
    print(f"\nwith steer, after {RELOADS + ROUND_TRIPS + (0 if why_not else TRACE_RELOADS)} reloads, "
          f"then idle for {IDLE_SECONDS:g} s:\n")
    print("| process | RSS | CPU ticks while idle | context switches while idle |")
    print("|---|---|---|---|")
    for name, r, t, c in zip(["graceexec", "its watchdog"], steer["rss"], steer["idle_ticks"], steer["idle_ctx"]):
        print(f"| {name} | {r} | {t} | {c} |")
    if starter_rss is not None:
        print(f"| for scale: start_server (Server::Starter) | {starter_rss} | | |")
    if not steer["watchdog"]:
        print("(no watchdog found)")


if __name__ == "__main__":
    main()
