"""Reload benchmark orchestrator; run it through scripts/reload-bench.sh.

    python3 scripts/reload_bench --bin target/release --out bench-results

Environment: SCENARIOS (steady,slow,bad,long,nodrain,canary), SUPERVISORS
(graceexec,graceexec-shared,server-starter,naive; default: each scenario's
own list, see scenarios.py), ADDR (127.0.0.1:PORT for every run; default a
free port per run), CLIENTS (32), KEEP_RAW=1 (keep the per-request files),
RELOAD_BENCH_TAG (marks the processes of this run).
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Probe, analyse, start_wrk  # noqa: E402
from procs import become_subreaper, free_loopback_addr, kill_leftovers, reap_orphans, stop_process  # noqa: E402
from report import LEGEND, canary_share, handover_table, plot, plot_shares, table  # noqa: E402
from scenarios import SCENARIOS  # noqa: E402
from supervisors import GraceExec, SUPERVISORS  # noqa: E402


class Interrupted(BaseException):
    """SIGINT or SIGTERM: not an error of one run, the end of all of them."""


STALL_WARNING_S = 0.1


def on_signal(signum, _frame):
    # Once: the clean-up that follows must not be cut short by a second one.
    # (A no-op handler rather than SIG_IGN, which makes Python complain about
    # a signal still pending.)
    hold_signals()
    raise Interrupted(signal.Signals(signum).name)


def hold_signals():
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)


def env_list(key: str, known: dict) -> list[str] | None:
    """The comma-separated KEY, checked against known; None when unset."""
    value = os.environ.get(key, "").strip()
    if not value:
        return None
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown:
        sys.exit(f"reload-bench: {key}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def wait_serving(addr: str, sup, limit: float) -> None:
    """Until GET /ping answers (the first generation is up), at most limit s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not sup.alive():
            raise RuntimeError(f"{sup.label} exited at start-up; see {sup.log_path}")
        try:
            with urllib.request.urlopen(f"http://{addr}/ping", timeout=0.5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{sup.label}: nothing answered on {addr} within {limit:.0f} s; see {sup.log_path}")


def time_wait() -> int | None:
    """TCP sockets in TIME_WAIT in this network namespace: with steering,
    graceexec's drain check reads /proc/net/tcp, which lists every one."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            words = line.split()
            return int(words[words.index("tw") + 1])
    return None


def sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


def run_one(scenario, sup_key, cfg):
    raw = cfg.out / "raw" / f"{scenario.key}-{sup_key}"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{cfg.tag}-"))
    release = tmp / "release"
    release.write_text("good\n")
    addr = cfg.addr or free_loopback_addr()
    lo, hi = scenario.delay_ms
    server = [str(cfg.bin / "examples" / "bench_server"), "--delay-ms", f"{lo}-{hi}",
              "--startup-ms", str(scenario.startup_ms), "--crash-ms", str(scenario.crash_ms),
              "--release-file", str(release), "--on-term", "exit" if scenario.nodrain else "drain",
              "--tag", cfg.tag]
    sup = SUPERVISORS[sup_key](cfg.bin, addr, server, tmp, raw / "supervisor.log")
    wrk = probe = None
    steps = []  # (seconds from t0, verb) as done
    try:
        sup.start()
        wait_serving(addr, sup, limit=scenario.startup_ms / 1000 + 15)
        if scenario.bad_release:
            release.write_text("bad\n")  # read by every server started from now on
        tw_at_start = time_wait()
        t0 = time.monotonic()
        stop_at = t0 + scenario.window
        wrk = start_wrk(addr, raw, cfg.clients, stop_at, scenario.window + scenario.grace, cfg.tag)
        probe = Probe(addr, stop_at)
        probe.start()
        for offset, verb in scenario.steps:
            sleep_until(t0 + offset)
            steps.append((time.monotonic() - t0, verb))
            sup.act(verb)
        probe.join(timeout=scenario.window + 5)
        (raw / "probe.tsv").write_text("".join(f"{line}\n" for line in probe.log))
        wrk.wait(timeout=scenario.window + scenario.grace + 15)
    finally:
        if wrk is not None and wrk.poll() is None:
            stop_process(wrk, signal.SIGTERM, timeout=5)
        sup.stop()
        leftovers = kill_leftovers()
        shutil.rmtree(tmp, ignore_errors=True)
    if leftovers:
        print(f"  warning: processes left behind, killed: {'; '.join(leftovers)}", file=sys.stderr)
    outcome = analyse(raw, t0, probe, scenario.window)
    started = sup.servers_started()
    summary = {
        "scenario": scenario.key, "supervisor": sup_key, "addr": addr, "t0_monotonic": t0,
        "requests": outcome.sent, "requests_after_window": outcome.sent_late,
        "answered": outcome.answered, "failed": outcome.failed, "errors": outcome.errors,
        "longest_gap_s": round(outcome.gap_s, 3), "gap_at": [round(t, 3) for t in outcome.gap],
        "pids": outcome.pids, "servers_started": started, "steps": [(round(t, 3), v) for t, v in steps],
        "probe_attempts": outcome.probe_attempts, "probe_answers": outcome.probe_answers,
        "probe_idle_s": round(outcome.probe_idle, 3),
        "leftovers": leftovers, "time_wait_at_start": tw_at_start,
    }
    if (share := canary_share(outcome, steps)) is not None:
        summary["canary"] = {"pid": share[0], "share": round(share[1], 4), "answers": share[2]}
    if isinstance(sup, GraceExec):
        summary["reloads_failed"] = sup.reloads_failed()
        summary["clients_failed"] = sup.clients_failed()
        summary.update(sup.handovers())
        asked = sum(verb != "promote" for _, verb in steps)
        if summary["reloads_seen"] != asked:
            # Two SIGHUPs pending at once are one signal: graceexec's loop
            # did not read its signals for the second apart.
            print(f"  warning: {asked} reloads asked, graceexec logged {summary['reloads_seen']}",
                  file=sys.stderr)
        if summary["reloads_failed"] or summary["clients_failed"]:
            print(f"  warning: {summary['reloads_failed']} reloads failed, {summary['clients_failed']} "
                  f"graceexec clients failed; see {sup.log_path}", file=sys.stderr)
    (raw / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if not cfg.keep_raw:
        for path in raw.glob("thread-*.tsv"):
            path.unlink()
    return outcome, started, steps, summary


def main() -> int:
    parser = argparse.ArgumentParser(description="graceexec reload benchmark (issue 4)")
    parser.add_argument("--bin", type=Path, required=True, help="cargo's release dir")
    parser.add_argument("--out", type=Path, required=True, help="results directory")
    cfg = parser.parse_args()
    cfg.scenarios = env_list("SCENARIOS", SCENARIOS) or list(SCENARIOS)
    cfg.supervisors = env_list("SUPERVISORS", SUPERVISORS)
    cfg.addr = os.environ.get("ADDR", "").strip() or None
    if cfg.addr and not cfg.addr.startswith("127."):
        sys.exit("reload-bench: ADDR must be a loopback address, 127.x.x.x:PORT")
    cfg.clients = int(os.environ.get("CLIENTS", "32"))
    cfg.keep_raw = os.environ.get("KEEP_RAW") == "1"
    cfg.tag = os.environ.get("RELOAD_BENCH_TAG") or f"reload-bench-{os.getpid()}"
    cfg.out.mkdir(parents=True, exist_ok=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    become_subreaper()
    rows, summaries, notes = [], [], []
    try:
        for s_key in cfg.scenarios:
            scenario = SCENARIOS[s_key]
            runs = []
            for sup_key in cfg.supervisors or scenario.supervisors:
                label = SUPERVISORS[sup_key].label
                lacking = {verb for _, verb in scenario.steps} - SUPERVISORS[sup_key].verbs
                if lacking:
                    print(f"{scenario.key} / {label}: skipped (cannot {', '.join(sorted(lacking))})",
                          file=sys.stderr, flush=True)
                    continue
                print(f"{scenario.key} / {label} ...", file=sys.stderr, flush=True)
                try:
                    outcome, started, steps, summary = run_one(scenario, sup_key, cfg)
                except Exception as e:  # one broken run must not cost the others
                    print(f"  run failed: {e}", file=sys.stderr, flush=True)
                    rows.append((scenario, label, None, f"run failed: {e}"))
                    continue
                print(f"  {outcome.answered:,} answered, {outcome.failed:,} failed, "
                      f"longest gap {outcome.gap_s:.2f} s, {len(outcome.pids)} pids served",
                      file=sys.stderr, flush=True)
                if "drain_wait_median_s" in summary:
                    print(f"  old generation steered away → SIGTERM: median "
                          f"{summary['drain_wait_median_s'] * 1000:.0f} ms, max "
                          f"{summary['drain_wait_max_s'] * 1000:.0f} ms", file=sys.stderr, flush=True)
                rows.append((scenario, label, outcome, started))
                runs.append((label, outcome, steps))
                summaries.append(summary)
                # (A request or two just at the window's end, all answered,
                # is the window's edge, not a retry: no note then.)
                if outcome.sent_late and outcome.failed:
                    notes.append(f"{scenario.key} / {label}: {outcome.sent_late:,} of the requests (and as many "
                                 "failures, at most) were sent after the load window, by wrk's immediate "
                                 "retry of a failed connection.")
                if outcome.probe_idle > STALL_WARNING_S:
                    notes.append(f"{scenario.key} / {label}: the probe itself was not scheduled for "
                                 f"up to {outcome.probe_idle:.2f} s (a busy machine); gaps up to "
                                 "that long may be the probe's, not the server's.")
            if runs:
                draw = plot_shares if scenario.share_plot else plot
                draw(scenario, runs, cfg.out / f"timeline-{scenario.key}.png")
    except Interrupted as e:
        print(f"reload-bench: interrupted ({e}); stopped everything it started", file=sys.stderr)
        return 130
    finally:
        hold_signals()
        kill_leftovers()
        reap_orphans(wait=False)

    text = table(rows) + handover_table(summaries, SUPERVISORS)
    scen_lines = "\n".join(f"- {SCENARIOS[k].title}" for k in cfg.scenarios)
    warnings = "".join(f"- {note}\n" for note in notes)
    if warnings:
        print(warnings, file=sys.stderr)
        warnings = f"\nWarnings:\n\n{warnings}"
    (cfg.out / "results.md").write_text(f"{text}\n{scen_lines}\n\n{LEGEND}{warnings}")
    (cfg.out / "results.json").write_text(json.dumps(summaries, indent=1) + "\n")
    print(text)
    print(f"results, pictures and logs: {cfg.out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
