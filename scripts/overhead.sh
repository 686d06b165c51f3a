#!/usr/bin/env bash
# graceexec's own overhead, with --handover steer and shared: request ->
# candidate exec, READY=1 -> stop signal (idle and under a light load, where
# steer waits for the drain), READY=1 -> steering program attached (traced
# with perf), the reload client's round trip, RSS, and CPU while idle. See
# scripts/overhead.py for what each figure includes.
#
#   scripts/overhead.sh                      # as root: installs perf (linux-perf) if missing; about a minute
#   RELOADS=1000 IDLE_SECONDS=30 ADDR=127.0.0.1:9099 scripts/overhead.sh
#   LOADED_RELOADS=100 LOAD_CLIENTS=8 TRACE_RELOADS=0 scripts/overhead.sh
#   FRESH_NETNS=1 scripts/overhead.sh        # as root, in a network namespace of its own
#
# With steer, the drain check reads /proc/net/tcp, whose length is the
# namespace's TIME_WAIT sockets: FRESH_NETNS=1 runs everything in a new
# network namespace (loopback only, no one else's connections), to tell
# graceexec's own cost from the table's.
set -euo pipefail
cd "$(dirname "$0")/.."

# perf records graceexec's syscalls for the READY=1 -> program switched
# figure; without it (not root, no apt) that figure is left out.
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
if ! command -v perf >/dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt_install linux-perf
fi
command -v python3 >/dev/null || apt_install python3

cargo build --release --quiet --bin graceexec --example timing --example load
rel=${CARGO_TARGET_DIR:-target}/release
if [ "${FRESH_NETNS:-0}" = 1 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null || ! command -v ip >/dev/null; then
        echo "overhead.sh: FRESH_NETNS=1 needs root, unshare and ip" >&2
        exit 1
    fi
    exec unshare --net sh -c 'ip link set lo up && exec python3 scripts/overhead.py "$1"' sh "$rel"
fi
exec python3 scripts/overhead.py "$rel"
