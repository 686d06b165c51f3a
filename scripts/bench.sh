#!/usr/bin/env bash
# Side by side, in one run: restarting a server the usual way (stop, then
# start: what `supervisorctl restart` does) against a graceexec reload, under
# the same load of clients that open a new connection per request.
#
#   scripts/bench.sh            # 127.0.0.1:8090, 32 clients, 10 restarts/reloads
#   ADDR=127.0.0.1:9099 CLIENTS=64 ROUNDS=20 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ADDR=${ADDR:-127.0.0.1:8090}
CLIENTS=${CLIENTS:-32}
ROUNDS=${ROUNDS:-10}
PAUSE=${PAUSE:-1}

cargo build --release --quiet --bin graceexec --example server --example load
bin=target/release
work=$(mktemp -d)
ge=""
cleanup() {
    [ -n "$ge" ] && kill -TERM "$ge" 2>/dev/null && wait "$ge" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

start() { # start graceexec in the background; sets $ge
    local n
    n=$(grep -c "ready after" "$work/ge.log" || true)
    "$bin/graceexec" --listen "$ADDR" --ready notify -- "$bin/examples/server" 2>>"$work/ge.log" &
    ge=$!
    for _ in $(seq 1 400); do
        [ "$(grep -c "ready after" "$work/ge.log" || true)" -gt "$n" ] && return 0
        sleep 0.025
    done
    echo "graceexec did not become ready" >&2; exit 1
}

run_load() { # run_load NAME: load in the background for the rounds
    "$bin/examples/load" --addr "$ADDR" --clients "$CLIENTS" --seconds $((ROUNDS * PAUSE + 2)) >"$work/$1.out" &
    load=$!
    sleep 1
}

: >"$work/ge.log"
start
run_load restart
for _ in $(seq 1 "$ROUNDS"); do
    kill -TERM "$ge"; wait "$ge" || true    # stop ...
    start                                   # ... then start
    sleep "$PAUSE"
done
wait "$load" || true

run_load reload
for i in $(seq 1 "$ROUNDS"); do
    n=$(grep -c "ready after" "$work/ge.log")
    kill -HUP "$ge"
    until [ "$(grep -c "ready after" "$work/ge.log")" -gt "$n" ]; do sleep 0.01; done
    sleep "$PAUSE"
done
wait "$load" || true

rss=$(awk '/VmRSS/ {print $2, $3}' "/proc/$ge/status")
ticks=$(awk '{print $14 + $15}' "/proc/$ge/stat")
printf '%-22s %10s %10s\n' "" served failed
for mode in restart reload; do
    printf '%-22s %10s %10s\n' "$([ $mode = restart ] && echo "stop+start x$ROUNDS" || echo "graceexec reload x$ROUNDS")" \
        "$(awk -F': ' '/^requests served/ {print $2}' "$work/$mode.out")" \
        "$(awk -F': ' '/^requests failed/ {print $2}' "$work/$mode.out")"
done
grep '^error' "$work/restart.out" | head -3 | sed 's/^/  restart /' || true
echo "graceexec after $ROUNDS reloads: RSS $rss, CPU $ticks ticks in total"
echo "time to ready (ms, median of the reloads): $(grep -o 'ready after [0-9]* ms' "$work/ge.log" | tail -n "$ROUNDS" | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
