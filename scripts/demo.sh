#!/usr/bin/env bash
# Build graceexec and the example server, run the server under graceexec,
# drive load with a new connection per request while reloading several
# times, and print requests served, requests failed and the pids that served.
#
#   scripts/demo.sh                 # 127.0.0.1:8080, 6 reloads, 32 clients
#   ADDR=127.0.0.1:9090 RELOADS=10 CLIENTS=64 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ADDR=${ADDR:-127.0.0.1:8080}
RELOADS=${RELOADS:-6}
CLIENTS=${CLIENTS:-32}

echo "building (release)..."
cargo build --release --quiet --bin graceexec --example server --example load
bin=${CARGO_TARGET_DIR:-target}/release

work=$(mktemp -d)
log=$work/graceexec.log
ge=""
cleanup() {
    if [ -n "$ge" ] && kill -0 "$ge" 2>/dev/null; then
        kill -TERM "$ge" 2>/dev/null || true
        wait "$ge" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# wait_for TEXT: poll the log until TEXT shows up (at most 30 s).
wait_for() {
    for _ in $(seq 1 600); do
        grep -q "$1" "$log" && return 0
        kill -0 "$ge" 2>/dev/null || { cat "$log"; echo "graceexec exited early" >&2; exit 1; }
        sleep 0.05
    done
    cat "$log"
    echo "timed out waiting for: $1" >&2
    exit 1
}

"$bin/graceexec" --listen "$ADDR" --ready notify -- "$bin/examples/server" 2>"$log" &
ge=$!
wait_for "generation 1 ready"
echo "graceexec (pid $ge) serving http://$ADDR/ ; load: $CLIENTS clients, $RELOADS reloads"

seconds=$((RELOADS + 3))
"$bin/examples/load" --addr "$ADDR" --clients "$CLIENTS" --seconds "$seconds" >"$work/load.out" &
load=$!
sleep 1
for gen in $(seq 2 $((RELOADS + 1))); do
    kill -HUP "$ge"
    wait_for "generation $gen ready"
    echo "  reload $((gen - 1)): $(grep -o "generation $gen ready after [0-9]* ms" "$log")"
    sleep 0.8
done
load_status=0
wait "$load" || load_status=$?

echo
cat "$work/load.out"
echo "reloads: $RELOADS (generations started: $(grep -c 'started as pid' "$log"))"
kill -TERM "$ge"
wait "$ge" || true
ge=""
exit "$load_status"
