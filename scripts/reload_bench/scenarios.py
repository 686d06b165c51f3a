"""The scenarios of the reload benchmark (issues 4 and 10).

Times are seconds from the start of the load. Requests are sent from 0 to
`window`; wrk then runs `grace` seconds more, so that requests in flight at
the end of the window can finish (a request still unanswered when wrk exits
counts as "no answer").

`steps` is the schedule: (time, verb), with verb "reload" (every
supervisor), or "canary" and "promote" (graceexec with steering only: the
scenario then runs only on the supervisors in `supervisors`).
"""

from dataclasses import dataclass

# What every scenario runs unless SUPERVISORS says otherwise.
DEFAULT_SUPERVISORS = ("graceexec", "server-starter", "naive")


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    window: float
    steps: list[tuple[float, str]]
    delay_ms: tuple[int, int] = (0, 20)
    startup_ms: int = 0
    # Every generation after the first crashes crash_ms into its start-up.
    bad_release: bool = False
    crash_ms: int = 1500
    # The server exits at once on SIGTERM, dropping what it has not answered.
    nodrain: bool = False
    supervisors: tuple[str, ...] = DEFAULT_SUPERVISORS
    # Answer shares per generation rather than answers per process.
    share_plot: bool = False

    @property
    def grace(self) -> float:
        # Well below bench_server's 20 s wait for a request head: wrk keeps
        # its connections open, idle, after it stops sending, and the server
        # closing one of them would count as a failure (a read error in wrk).
        return min(self.delay_ms[1] / 1000 + 1.5, 10)


def reload_at(*times: float) -> list[tuple[float, str]]:
    return [(float(t), "reload") for t in times]


SCENARIOS = {
    s.key: s
    for s in [
        Scenario(
            key="steady",
            title="steady: 10 reloads in 12 s, requests take 0-20 ms",
            window=12,
            steps=reload_at(*range(1, 11)),
        ),
        Scenario(
            key="slow",
            title="slow start: the server needs 2.5 s before it is ready; 3 reloads",
            window=13,
            steps=reload_at(1, 5, 9),
            startup_ms=2500,
        ),
        Scenario(
            key="bad",
            title="bad release: every new generation crashes 1.5 s into start-up; 3 reloads",
            window=12,
            steps=reload_at(1, 5, 9),
            bad_release=True,
        ),
        Scenario(
            key="long",
            title="long requests: requests take 0-3 s; 3 reloads with requests in flight",
            window=12,
            steps=reload_at(2, 5, 8),
            delay_ms=(0, 3000),
        ),
        Scenario(
            key="nodrain",
            title="does not drain: the server exits at once on SIGTERM, requests take 0-50 ms; 10 reloads",
            window=12,
            steps=reload_at(*range(1, 11)),
            delay_ms=(0, 50),
            nodrain=True,
            supervisors=("graceexec", "graceexec-shared", "server-starter", "naive"),
        ),
        Scenario(
            key="canary",
            title="canary: `graceexec reload --canary 25` at 3 s, `graceexec promote` at 9 s",
            window=12,
            steps=[(3.0, "canary"), (9.0, "promote")],
            supervisors=("graceexec",),
            share_plot=True,
        ),
    ]
}
