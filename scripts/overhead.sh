#!/bin/sh
# graceexec's own overhead: request -> candidate exec, READY=1 -> stop signal,
# the reload client's round trip, RSS, and CPU while idle. See
# scripts/overhead.py for what each figure includes.
#
#   scripts/overhead.sh                      # 200 reloads, 10 s idle
#   RELOADS=1000 IDLE_SECONDS=30 ADDR=127.0.0.1:9099 scripts/overhead.sh
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin graceexec --example timing
exec python3 scripts/overhead.py target/release
