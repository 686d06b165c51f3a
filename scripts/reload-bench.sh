#!/usr/bin/env bash
# Reload benchmark (issues 4 and 10): the same server
# (examples/bench_server.rs) under graceexec (--ready notify; --handover
# steer, its default, and for comparison --handover shared), Server::Starter's
# start_server and a plain stop-then-start restart, in six scenarios (steady,
# slow start, bad release, long requests, a server that does not drain, and
# a graceexec canary that is then promoted), each under 32 wrk clients that
# open a new connection per request, with a sequential probe beside them.
# Prints a Markdown table and writes it, the raw summaries, logs and one
# timeline PNG per scenario to the results directory. About 5 minutes for
# everything.
#
# Each scenario runs its own list of supervisors (scenarios.py): graceexec
# (steer), start_server and stop + start; "nodrain" adds graceexec-shared,
# "canary" is graceexec alone. SUPERVISORS replaces the list for every
# scenario (skipping a supervisor that cannot do a scenario's steps).
#
#   scripts/reload-bench.sh                            # as root: installs wrk, Server::Starter, matplotlib if missing
#   SCENARIOS=steady,slow SUPERVISORS=graceexec,graceexec-shared,naive scripts/reload-bench.sh
#   SCENARIOS=nodrain,canary scripts/reload-bench.sh
#   OUT=/tmp/rb ADDR=127.0.0.1:18090 CLIENTS=64 KEEP_RAW=1 scripts/reload-bench.sh
#
# OUT defaults to bench-results/ (git-ignored). Loopback only. Every process
# it starts is stopped on exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench-results}

# What it needs beyond the Rust toolchain, installed only when missing.
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v start_server >/dev/null && perl -MServer::Starter -e1 2>/dev/null || missing+=(libserver-starter-perl)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
python_with matplotlib=matplotlib
# record.lua timestamps answers through LuaJIT's ffi (clock_gettime).
if ! ldd "$(command -v wrk)" | grep luajit >/dev/null; then
    echo "reload-bench: this wrk is not built with LuaJIT, which record.lua needs" >&2
    exit 1
fi

cargo build --release --quiet --bin graceexec --example bench_server

# Every process of this run carries the tag in its command line: the last
# resort below kills, by pid, what the orchestrator could not stop.
RELOAD_BENCH_TAG="reload-bench-$$-$(date +%s)"
export RELOAD_BENCH_TAG
# shellcheck disable=SC2317  # called by the trap below, which shellcheck 0.9 does not see
sweep() {
    local dir pid args
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [ "$pid" = $$ ] && continue
        mapfile -d "" args 2>/dev/null <"$dir/cmdline" || continue
        case "${args[*]}" in *"$RELOAD_BENCH_TAG"*) kill -KILL "$pid" 2>/dev/null || true ;; esac
    done
}
trap sweep EXIT

PYTHONDONTWRITEBYTECODE=1 "$py" scripts/reload_bench --bin "${CARGO_TARGET_DIR:-target}/release" --out "$OUT" &
py=$!
# A background job of a script ignores SIGINT, so Ctrl-C reaches us: pass it
# on as SIGTERM and wait for the orchestrator to stop what it started.
trap 'kill -TERM "$py" 2>/dev/null || true' INT TERM
status=0
while kill -0 "$py" 2>/dev/null; do
    wait "$py" && status=0 || status=$?
done
exit "$status"
