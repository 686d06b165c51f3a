"""The Markdown table and the timeline pictures."""

from pathlib import Path

from measure import ERROR_CLASSES, Outcome
from scenarios import Scenario

BIN_S = 0.05


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


LEGEND = """\
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
"""


def plot(scenario: Scenario, runs: list[tuple[str, Outcome, list[float]]], path: Path) -> None:
    """runs: (supervisor label, outcome, reload times) -> one PNG, a subplot each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = scenario.window + scenario.grace
    nbins = int(round(end / BIN_S))
    fig, axes = plt.subplots(len(runs), 1, figsize=(13, 3.1 * len(runs) + 0.8), sharex=True, squeeze=False)
    colours = plt.get_cmap("tab20").colors
    peak = 1
    for ax, (label, o, reloads) in zip(axes[:, 0], runs):
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
        for k, t in enumerate(reloads):
            ax.axvline(t, color="black", linestyle="--", linewidth=1, label="reload" if k == 0 else None)
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
