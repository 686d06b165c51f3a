#!/usr/bin/env bash
# `graceexec upgrade` under load: UPGRADES upgrades in a row (alternating
# between two copies of the release binary, so that each one really is a
# new image), while examples/load runs CLIENTS clients with a new
# connection per request. Prints the client's round trip of each upgrade
# (dry run, exec and take-over included) as min/median/max, what the load
# saw, and graceexec's open fds and RSS before and after.
#
#   scripts/upgrade-bench.sh
#   UPGRADES=100 CLIENTS=32 ADDR=127.0.0.1:9098 scripts/upgrade-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
UPGRADES=${UPGRADES:-20}
CLIENTS=${CLIENTS:-16}
ADDR=${ADDR:-127.0.0.1:18201}
case $ADDR in 127.*:* | "[::1]":*) ;; *) echo "upgrade-bench: ADDR must be on loopback" >&2; exit 2 ;; esac
case $UPGRADES$CLIENTS in *[!0-9]*) echo "upgrade-bench: UPGRADES and CLIENTS are numbers" >&2; exit 2 ;; esac

cargo build --release --quiet --bin graceexec --example server --example load
dir=$(mktemp -d /tmp/graceexec-upgrade-bench.XXXXXX)
rel=${CARGO_TARGET_DIR:-target}/release
ge=$rel/graceexec
cp "$ge" "$dir/graceexec-a" && cp "$ge" "$dir/graceexec-b"
export XDG_RUNTIME_DIR=$dir
pid='' load=''
cleanup() {
    [ -z "$load" ] || kill "$load" 2>/dev/null || true
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

"$ge" --name bench -l "$ADDR" --ready notify -- "$rel/examples/server" >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 100); do "$ge" status --name bench >/dev/null 2>&1 && break; sleep 0.1; done
"$ge" status --name bench >/dev/null || { cat "$dir/log"; exit 1; }
fds() { find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l; }
rss() { awk '/^VmRSS/ {print $2 " kB"}' "/proc/$pid/status"; }
before="$(fds) fds, $(rss)"
"$rel/examples/load" --addr "$ADDR" --clients "$CLIENTS" --seconds 600 --stop-file "$dir/stop" >"$dir/load" 2>&1 &
load=$!
sleep 1
for i in $(seq "$UPGRADES"); do
    b=$dir/graceexec-a
    [ $((i % 2)) = 0 ] && b=$dir/graceexec-b
    s=$EPOCHREALTIME
    "$ge" upgrade --name bench --binary "$b" >/dev/null
    e=$EPOCHREALTIME
    echo "${s/./} ${e/./}" | awk '{print $2 - $1}' >>"$dir/times"
done
sleep 1
touch "$dir/stop"
wait "$load"
load=''
[ "$(readlink "/proc/$pid/exe")" = "$b" ] || { echo "upgrade-bench: graceexec does not run $b" >&2; exit 1; }
echo "graceexec $("$ge" --version | cut -d' ' -f2), $UPGRADES upgrades under $CLIENTS clients:"
sort -n "$dir/times" | awk '{a[NR] = $1} END {printf "  round trip of an upgrade: min %.1f ms, median %.1f ms, max %.1f ms\n", a[1] / 1000, a[int((NR + 1) / 2)] / 1000, a[NR] / 1000}'
sed 's/^/  /' "$dir/load"
echo "  graceexec before: $before; after: $(fds) fds, $(rss)"
"$ge" stop --name bench >/dev/null
wait "$pid"
pid=''
