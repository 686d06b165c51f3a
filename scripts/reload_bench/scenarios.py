"""The four scenarios of the reload benchmark (issue 4).

Times are seconds from the start of the load. Requests are sent from 0 to
`window`; wrk then runs `grace` seconds more, so that requests in flight at
the end of the window can finish (a request still unanswered when wrk exits
counts as "no answer").
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    window: float
    reloads: list[float]
    delay_ms: tuple[int, int] = (0, 20)
    startup_ms: int = 0
    # Every generation after the first crashes crash_ms into its start-up.
    bad_release: bool = False
    crash_ms: int = 1500

    @property
    def grace(self) -> float:
        # Well below bench_server's 20 s wait for a request head: wrk keeps
        # its connections open, idle, after it stops sending, and the server
        # closing one of them would count as a failure (a read error in wrk).
        return min(self.delay_ms[1] / 1000 + 1.5, 10)


SCENARIOS = {
    s.key: s
    for s in [
        Scenario(
            key="steady",
            title="steady: 10 reloads in 12 s, requests take 0-20 ms",
            window=12,
            reloads=[float(t) for t in range(1, 11)],
        ),
        Scenario(
            key="slow",
            title="slow start: the server needs 2.5 s before it is ready; 3 reloads",
            window=13,
            reloads=[1, 5, 9],
            startup_ms=2500,
        ),
        Scenario(
            key="bad",
            title="bad release: every new generation crashes 1.5 s into start-up; 3 reloads",
            window=12,
            reloads=[1, 5, 9],
            bad_release=True,
        ),
        Scenario(
            key="long",
            title="long requests: requests take 0-3 s; 3 reloads with requests in flight",
            window=12,
            reloads=[2, 5, 8],
            delay_ms=(0, 3000),
        ),
    ]
}
