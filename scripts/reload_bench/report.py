"""The Markdown table and the timeline pictures."""

from pathlib import Path

from measure import ERROR_CLASSES, Outcome
from scenarios import Scenario

BIN_S = 0.05
SHARE_BIN_S = 0.25
# How each step of a schedule is marked.
STEP_STYLE = {
    "reload": dict(color="black", linestyle="--", linewidth=1),
    "canary": dict(color="tab:orange", linestyle="--", linewidth=1.5),
    "promote": dict(color="tab:green", linestyle="-", linewidth=1.5),
}
STEP_NAME = {"reload": "reload", "canary": "reload --canary 25", "promote": "promote"}


def table(rows: list[tuple[Scenario, str, Outcome | None, int | str]]) -> str:
    """rows: (scenario, supervisor label, outcome, server processes started),
    or (scenario, label, None, why the run failed)."""
    classes = " / ".join(ERROR_CLASSES)
    lines = [
        f"| scenario | supervisor | requests | answered | failed ({classes}) "
        "| longest probe gap | servers started | pids that served |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    for scenario, label, o, started in rows:
        if o is None:
            lines.append(f"| {scenario.key} | {label} | {started} | | | | | |")
            continue
        by_class = " / ".join(str(o.errors[c]) for c in ERROR_CLASSES)
        failed = f"**{o.failed:,}** ({by_class})" if o.failed else f"0 ({by_class})"
        pids = " ".join(str(pid) for pid, _ in o.pids)
        lines.append(
            f"| {scenario.key} | {label} | {o.sent:,} | {o.answered:,} | {failed} "
            f"| {o.gap_s:.2f} s ({o.gap[0]:.2f}-{o.gap[1]:.2f}) | {started} "
            f"| {len(o.pids)}: {pids} |"
        )
    return "\n".join(lines) + "\n"


def handover_table(summaries: list[dict], supervisors: dict) -> str:
    """graceexec's runs: reloads asked and seen, and how long each old
    generation waited between losing new connections and its SIGTERM."""
    runs = [s for s in summaries if "reloads_seen" in s]
    if not runs:
        return ""
    lines = [
        "\n| scenario | supervisor | TIME_WAIT sockets at start | reloads asked | reloads graceexec logged "
        "| steered away → SIGTERM: n | median | p90 | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in runs:
        asked = sum(verb != "promote" for _, verb in s["steps"])
        waits = s["drain_waits_s"]
        stats = (f"{s['drain_wait_median_s'] * 1000:.0f} ms | {s['drain_wait_p90_s'] * 1000:.0f} ms "
                 f"| {s['drain_wait_max_s'] * 1000:.0f} ms") if waits else "| |"
        tw = s.get("time_wait_at_start")
        lines.append(f"| {s['scenario']} | {supervisors[s['supervisor']].label} "
                     f"| {'?' if tw is None else f'{tw:,}'} | {asked} "
                     f"| {s['reloads_seen']} | {len(waits)} | {stats} |")
    return "\n".join(lines) + "\n"


LEGEND = """\
- graceexec runs with `--ready notify`, and `--handover steer` (its
  default: each generation its own socket, new connections steered to the
  ready new one, the old one sent SIGTERM once its queue is empty and it
  holds no connection) or `--handover shared` (one socket for every
  generation, the old one sent SIGTERM as soon as the new one is ready).
- requests: requests wrk started (32 clients, a new connection per request,
  `Connection: close`); answered: 2xx answers. wrk retries a refused
  connection at once, so a port nobody listens on yields many "requests".
- failed, by class: wrk's socket errors (connect; read: the connection was
  reset or closed before the answer; write: wrk reports a refused connection
  as a write error, its connect being non-blocking),
  timeout (answered after wrk's --timeout of 5 s), non-2xx, and "no answer":
  sent, never answered, and not one of wrk's read or write errors; in
  practice a connection still waiting in an accept queue that nobody serves
  when the load ended. wrk does not count those, and a connection stuck that
  way sends nothing more, so each of the 32 counts at most once.
- longest probe gap: the longest stretch of the load window (edges
  included) in which a sequential probe (GET /ping, answered without delay,
  one at a time, a new connection each, 250 ms timeout) got no answer; in
  brackets, where it was (seconds from the load start). Answers to requests
  accepted earlier may still arrive during it (long requests draining).
- servers started: server processes the supervisor started, the first included.
- steered away → SIGTERM (graceexec only): from the log line after which an
  old generation gets no new connection ("new connections: ..." without
  it; with `--handover shared`, the next generation's "ready" line) to its
  "stopping with SIGTERM" line, both stamped as the bench read them from
  graceexec's output. With steer, that is the drain wait; with shared, the
  time to send a signal. "reloads graceexec logged" below "reloads asked":
  SIGHUPs that arrived while an earlier one was still pending, which the
  kernel merges into one. TIME_WAIT sockets: /proc/net/sockstat when the
  load started; with steer, the drain check reads /proc/net/tcp, which
  lists each of them.
"""


def mark_steps(ax, steps: list[tuple[float, str]]) -> None:
    seen = set()
    for t, verb in steps:
        ax.axvline(t, **STEP_STYLE[verb], label=None if verb in seen else STEP_NAME[verb])
        seen.add(verb)


def plot(scenario: Scenario, runs: list[tuple[str, Outcome, list[tuple[float, str]]]], path: Path) -> None:
    """runs: (supervisor label, outcome, steps done) -> one PNG, a subplot each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = scenario.window + scenario.grace
    nbins = int(round(end / BIN_S))
    fig, axes = plt.subplots(len(runs), 1, figsize=(13, 3.1 * len(runs) + 0.8), sharex=True, squeeze=False)
    colours = plt.get_cmap("tab20").colors
    peak = 1
    for ax, (label, o, steps) in zip(axes[:, 0], runs):
        order = {pid: k for k, (pid, _) in enumerate(o.pids)}
        counts = [[0] * nbins for _ in o.pids]
        for t, pid in o.timeline:
            b = int(t / BIN_S)
            if 0 <= b < nbins:
                counts[order[pid]][b] += 1
        bottom = [0] * nbins
        xs = [k * BIN_S for k in range(nbins)]
        for k, (pid, _) in enumerate(o.pids):
            ax.bar(xs, counts[k], width=BIN_S, bottom=bottom, align="edge", linewidth=0,
                   color=colours[k % len(colours)], label=f"gen {k + 1} (pid {pid})")
            bottom = [a + b for a, b in zip(bottom, counts[k])]
        peak = max(peak, *bottom)
        mark_steps(ax, steps)
        ax.axvspan(*o.gap, color="red", alpha=0.15, label=f"longest probe gap {o.gap_s:.2f} s")
        ax.axvline(scenario.window, color="grey", linestyle=":", linewidth=1,
                   label="load stops sending" if ax is axes[0, 0] else None)
        ax.set_title(f"{label}: {o.answered:,} answered, {o.failed:,} failed, "
                     f"probe without an answer for up to {o.gap_s:.2f} s", fontsize=11, loc="left")
        ax.set_ylabel(f"answers per {int(BIN_S * 1000)} ms")
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False,
                  ncol=1 if len(o.pids) <= 12 else 2)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylim(0, peak * 1.1)
    axes[-1, 0].set_xlim(0, end)
    axes[-1, 0].set_xlabel("seconds since the load started (colour: the server process that answered)")
    fig.suptitle(scenario.title, fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def canary_share(o: Outcome, steps: list[tuple[float, str]]) -> tuple[int, float, int] | None:
    """(pid, share, answers): the generation that first answered after the
    canary step, and its share of the answers from that step to the promote."""
    times = {verb: t for t, verb in steps}
    if "canary" not in times or "promote" not in times:
        return None
    inside = [(t, pid) for t, pid in o.timeline if times["canary"] <= t < times["promote"]]
    before = {pid for t, pid in o.timeline if t < times["canary"]}
    new = [pid for _, pid in sorted(inside) if pid not in before]
    if not inside or not new:
        return None
    return new[0], sum(pid == new[0] for _, pid in inside) / len(inside), len(inside)


def plot_shares(scenario: Scenario, runs: list[tuple[str, Outcome, list[tuple[float, str]]]], path: Path) -> None:
    """The share of answers per generation, per SHARE_BIN_S: one PNG, a subplot per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = scenario.window + scenario.grace
    nbins = int(round(end / SHARE_BIN_S))
    fig, axes = plt.subplots(len(runs), 1, figsize=(13, 3.6 * len(runs) + 0.8), sharex=True, squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, (label, o, steps) in zip(axes[:, 0], runs):
        order = {pid: k for k, (pid, _) in enumerate(o.pids)}
        counts = [[0] * nbins for _ in o.pids]
        for t, pid in o.timeline:
            b = int(t / SHARE_BIN_S)
            if 0 <= b < nbins:
                counts[order[pid]][b] += 1
        totals = [sum(c[b] for c in counts) for b in range(nbins)]
        # A bin after the load stopped holds a handful of late answers: no share.
        shown = [b for b in range(nbins) if totals[b] >= 20]
        xs = [b * SHARE_BIN_S for b in shown]
        # Newest generation at the bottom, so that a canary's band starts at
        # 0 and can be read against the 25% line.
        gens = list(reversed(range(len(o.pids))))
        ax.stackplot(xs, [[100 * counts[k][b] / totals[b] for b in shown] for k in gens], step="post",
                     colors=[colours[k % len(colours)] for k in gens], alpha=0.85,
                     labels=[f"gen {k + 1} (pid {o.pids[k][0]})" for k in gens])
        ax.axhline(25, color="black", linestyle=":", linewidth=1, label="25%", zorder=3)
        mark_steps(ax, steps)
        got = canary_share(o, steps)
        share = f"; the canary answered {100 * got[1]:.1f}% of {got[2]:,} answers until the promote" if got else ""
        ax.set_title(f"{label}: {o.answered:,} answered, {o.failed:,} failed{share}", fontsize=11, loc="left")
        ax.set_ylabel(f"share of answers per {int(SHARE_BIN_S * 1000)} ms (%)")
        ax.set_ylim(0, 100)
        handles, labels = ax.get_legend_handles_labels()
        n = len(gens)  # the bands come first, newest first: list them oldest first
        ax.legend(handles[:n][::-1] + handles[n:], labels[:n][::-1] + labels[n:], loc="upper left",
                  bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlim(0, scenario.window)
    axes[-1, 0].set_xlabel("seconds since the load started (colour: the generation that answered)")
    fig.suptitle(scenario.title, fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
