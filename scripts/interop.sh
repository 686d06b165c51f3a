#!/usr/bin/env bash
# Interop: real servers under graceexec, each reloaded RELOADS times while
# CLIENTS clients open a new connection per request (examples/load.rs, on
# 127.0.0.1 only), then stopped. Installs what is missing (pip: gunicorn,
# uvicorn; apt-get: lighttpd; cargo: the listenfd example) and prints one
# table. Exits 1 if a request failed, a reload failed, a server did not exit
# cleanly or left a process behind.
#
#   scripts/interop.sh
#   SERVERS="gunicorn lighttpd" RELOADS=30 CLIENTS=64 scripts/interop.sh
#   INTEROP_NONGATING=uvicorn scripts/interop.sh   # report uvicorn's failed requests, don't fail on them
#   INTEROP_KEEP=1 scripts/interop.sh               # keep the logs (the directory is named at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian installs lighttpd in /usr/sbin, which a user's PATH (or a trimmed
# one) may lack: it would be installed again, then not found to run.
PATH=$PATH:/usr/sbin:/sbin

SERVERS=${SERVERS:-"listenfd gunicorn uvicorn uvicorn-pr3124 lighttpd"}
RELOADS=${RELOADS:-20}
CLIENTS=${CLIENTS:-32}
PAUSE=${PAUSE:-0.2}       # pacing between reloads, so that every generation serves
GUNICORN_PIN=${GUNICORN_PIN:-27.0.1}   # versions installed when missing
UVICORN_PIN=${UVICORN_PIN:-0.54.0}
INTEROP_NONGATING=${INTEROP_NONGATING:-}
known_servers="listenfd gunicorn uvicorn uvicorn-pr3124 lighttpd"

# Bad input stops the script before it installs or runs anything.
usage_error() { echo "interop: $*" >&2; exit 2; }
for name in $SERVERS $INTEROP_NONGATING; do
    [[ " $known_servers " == *" $name "* ]] || usage_error "unknown server $name (known: $known_servers)"
done
[ -n "${SERVERS// /}" ] || usage_error "SERVERS is empty (known: $known_servers)"
[[ $RELOADS =~ ^[1-9][0-9]{0,3}$ ]] || usage_error "RELOADS=$RELOADS: want a whole number from 1 to 9999"
[[ $CLIENTS =~ ^[1-9][0-9]{0,3}$ ]] || usage_error "CLIENTS=$CLIENTS: want a whole number from 1 to 9999"
[[ $PAUSE =~ ^[0-9]{1,2}(\.[0-9]+)?$ ]] || usage_error "PAUSE=$PAUSE: want seconds, such as 0.2"

bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d "${TMPDIR:-/tmp}/graceexec-interop.XXXXXX")
ge=""   # the graceexec instance running now
load="" # the load generator running now

say() { echo "interop: $*" >&2; }

# Every process started for this script carries this in its environment (graceexec
# passes it on to the generations and they to their workers), so the check
# for leftovers and the cleanup find exactly ours, whatever pids get reused.
marker_prefix="GRACEEXEC_INTEROP=$$"

# Every process we started is gone when this returns.
cleanup() {
    local status=$?
    set +e
    [ -n "$load" ] && kill -TERM "$load" 2>/dev/null
    if [ -n "$ge" ] && kill -0 "$ge" 2>/dev/null; then
        kill -TERM "$ge" 2>/dev/null
        wait_gone "$ge" 30 || kill -KILL "$ge" 2>/dev/null
    fi
    for pid in $(marked "$marker_prefix\\..*"); do
        kill -KILL "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    if [ -n "${INTEROP_KEEP:-}" ]; then
        say "logs kept in $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_gone PID SECONDS: true once PID has exited (reaping it if it is ours).
wait_gone() {
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null; return 0; }
        sleep 0.05
    done
    return 1
}

# marked REGEX: the pids of the processes whose environment has a variable
# (the whole NAME=VALUE) that matches REGEX.
marked() {
    grep -lsxz -- "$1" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | grep -vx "$BASHPID" || true
}

# wait_log FILE TEXT SECONDS: wait until TEXT is in FILE, while graceexec lives.
wait_log() {
    local i
    for ((i = 0; i < $3 * 20; i++)); do
        grep -qs -- "$2" "$1" && return 0
        kill -0 "$ge" 2>/dev/null || { say "graceexec exited while waiting for: $2"; return 1; }
        sleep 0.05
    done
    say "timed out after $3 s waiting for: $2"
    return 1
}

wanted() { [[ " $SERVERS " == *" $1 "* ]]; }
nongating() { [[ " $INTEROP_NONGATING " == *" $1 "* ]]; }

# --- installs ---------------------------------------------------------------

quietly() { # quietly LOG CMD...: run CMD, show its output only if it fails
    if ! "${@:2}" >"$1" 2>&1; then
        cat "$1" >&2
        say "failed: ${*:2}"
        exit 1
    fi
}

# shellcheck source=scripts/deps.sh
. scripts/deps.sh
py=""
pips=()
wanted gunicorn && pips+=("gunicorn=gunicorn==$GUNICORN_PIN")
{ wanted uvicorn || wanted uvicorn-pr3124; } && pips+=("uvicorn=uvicorn==$UVICORN_PIN")
[ ${#pips[@]} -eq 0 ] || python_with "${pips[@]}"
wanted lighttpd && ! command -v lighttpd >/dev/null && apt_install lighttpd
quietly "$work/cargo.log" cargo build --release --bin graceexec --example load --example listenfd_server

# --- the servers ------------------------------------------------------------

mkdir -p "$work/app"
# WSGI (gunicorn) and ASGI (uvicorn) apps that answer with the pid that served.
cat >"$work/app/wsgi_app.py" <<'EOF'
import os


def app(environ, start_response):
    body = b"pid=%d\n" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
EOF
cat >"$work/app/asgi_app.py" <<'EOF'
import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b"pid=%d\n" % os.getpid()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
EOF
# uvicorn with the shutdown order proposed upstream in Kludex/uvicorn PR #3124
# (closed unmerged; the bug is issue #2757): after it stops listening, yield
# to the event loop, so that a connection accepted a moment before has its
# request read and served instead of being closed unread. asyncio needs a few
# turns of its loop from accept(2) to reading: one to start the transport's
# task, one for connection_made and the reader, one for the read itself. Run beside
# the stock uvicorn to show that its resets are uvicorn's shutdown, not the
# handover.
cat >"$work/app/uvicorn_pr3124.py" <<'EOF'
import asyncio
import sys

import uvicorn.main
import uvicorn.server

stock_shutdown = uvicorn.server.Server.shutdown


async def shutdown(self, sockets=None):
    for server in self.servers:
        server.close()
    for _ in range(5):
        await asyncio.sleep(0)
    await stock_shutdown(self, sockets)


uvicorn.server.Server.shutdown = shutdown
sys.exit(uvicorn.main.main())
EOF
# One lighttpd generation: a document root whose index.html names its pid, and
# a config for it. `exec` keeps the pid that LISTEN_PID names. No server.bind:
# with socket activation, lighttpd then serves the passed socket and binds
# nothing of its own.
cat >"$work/app/lighttpd-generation" <<EOF
#!/bin/sh
set -eu
dir="$work/lighttpd/\$\$"
mkdir -p "\$dir/root"
echo "pid=\$\$" >"\$dir/root/index.html"
cat >"\$dir/lighttpd.conf" <<CONF
server.document-root = "\$dir/root"
server.errorlog = "\$dir/error.log"
server.systemd-socket-activation = "enable"
index-file.names = ("index.html")
CONF
exec lighttpd -D -f "\$dir/lighttpd.conf"
EOF
chmod +x "$work/app/lighttpd-generation"

# Set by setup_NAME: the label and version for the table, graceexec's options,
# the command, and the exit statuses a clean stop may end with.
label="" version="" ge_opts=() command=() clean_statuses=""

setup_listenfd() {
    label="listenfd (Rust)"
    version="listenfd $(awk '/^name = "listenfd"/ {getline; gsub(/[^0-9.]/, ""); print}' Cargo.lock)"
    ge_opts=(--ready notify)
    command=("$bin/examples/listenfd_server")
    clean_statuses="0"
}

setup_gunicorn() {
    label="gunicorn"
    version="gunicorn $("$py" -c 'import gunicorn; print(gunicorn.__version__)')"
    # gunicorn's arbiter sends READY=1 once it holds the socket, before its
    # workers start; with --preload the app is imported before that, so an
    # app that fails to import fails the reload.
    ge_opts=(--ready notify)
    command=("$py" -m gunicorn --chdir "$work/app" --workers 2 --preload --log-level warning)
    # Since 25.1 each master has a control socket, by default one shared path
    # that the two masters of a reload would fight over.
    if "$py" -m gunicorn --help 2>/dev/null | grep -q -- --no-control-socket; then
        command+=(--no-control-socket)
    fi
    command+=(wsgi_app:app)
    clean_statuses="0"
}

setup_uvicorn() {
    label="uvicorn"
    version="uvicorn $("$py" -c 'import uvicorn; print(uvicorn.__version__)')"
    ge_opts=(--ready delay:500ms)
    command=("$py" -m uvicorn --app-dir "$work/app" --fd 3 --log-level warning asgi_app:app)
    # After its graceful shutdown uvicorn re-raises the signal it got, so it
    # ends killed by SIGTERM, and graceexec exits 128+15.
    clean_statuses="0 143"
}

setup_uvicorn-pr3124() {
    setup_uvicorn
    label="uvicorn + PR #3124's shutdown"
    command=("$py" "$work/app/uvicorn_pr3124.py" "${command[@]:3}")
}

setup_lighttpd() {
    label="lighttpd"
    version=$(lighttpd -v 2>&1 | head -n 1 | awk '{sub("/", " ", $1); print $1}')
    # lighttpd sends no READY=1; SIGINT is its graceful shutdown (SIGTERM
    # closes every connection at once).
    ge_opts=(--ready delay:500ms --stop-signal INT)
    command=("$work/app/lighttpd-generation")
    clean_statuses="0"
}

# --- one run ----------------------------------------------------------------

rows=()
failed_servers=()

# run NAME: run one server under graceexec, reload it under load, stop it.
# Appends a row to rows; returns 1 (after saying why) if anything went wrong
# other than failed requests, which the caller judges from the row.
run() {
    local name=$1 inst="interop-$1-$$" log="$work/$1.log" out="$work/$1.load"
    local marker="$marker_prefix.$1" port i load_status status left
    "setup_$name"
    env "$marker" "$bin/graceexec" --name "$inst" --listen 127.0.0.1:0 --stop-timeout 20s \
        --ready-timeout 30s "${ge_opts[@]}" -- "${command[@]}" >"$log" 2>&1 &
    ge=$!
    wait_log "$log" "generation 1 ready" 60 || return 1
    port=$(sed -n 's/^graceexec\[[0-9]*\]: bound 127\.0\.0\.1:\([0-9]*\) as .*/\1/p' "$log")

    "$bin/examples/load" --addr "127.0.0.1:$port" --clients "$CLIENTS" --seconds 300 \
        --stop-file "$work/$name.stop" >"$out" 2>&1 &
    load=$!
    sleep "$PAUSE"
    for ((i = 1; i <= RELOADS; i++)); do
        if ! "$bin/graceexec" reload --name "$inst" --timeout 60s >>"$work/$name.reloads" 2>&1; then
            cat "$work/$name.reloads" >&2
            say "$name: reload $i failed"
            return 1
        fi
        sleep "$PAUSE"
    done
    touch "$work/$name.stop"
    load_status=0
    wait "$load" || load_status=$?
    load=""

    if ! "$bin/graceexec" stop --name "$inst" --timeout 60s >"$work/$name.stop.out" 2>&1; then
        cat "$work/$name.stop.out" >&2
        say "$name: graceexec stop failed"
        return 1
    fi
    status=0
    wait "$ge" || status=$?
    ge=""
    if [[ " $clean_statuses " != *" $status "* ]]; then
        say "$name: graceexec exited with status $status (expected one of: $clean_statuses)"
        return 1
    fi
    left=$(marked "$marker")
    if [ -n "$left" ]; then
        say "$name: processes left behind:"
        for i in $left; do
            echo "  $i $(tr '\0' ' ' <"/proc/$i/cmdline" 2>/dev/null)" >&2
        done
        return 1
    fi
    if [ "$load_status" -ne 0 ] && ! grep -q '^requests failed: [1-9]' "$out"; then
        cat "$out" >&2
        say "$name: the load generator failed"
        return 1
    fi

    local served failed gap pids
    served=$(sed -n 's/^requests served: //p' "$out")
    failed=$(sed -n 's/^requests failed: //p' "$out")
    gap=$(sed -n 's/^longest gap without an answer: \([0-9]*\) ms.*/\1 ms/p' "$out")
    pids=$(sed -n 's/^pids that served: //p' "$out" | wc -w)
    rows+=("| $label | $version | $RELOADS | $served | $failed | $gap | $pids |")
    if [ "$failed" != 0 ]; then
        failed_servers+=("$name")
        {
            say "$name: $failed of $((served + failed)) requests failed$(nongating "$name" && echo ' (not gating)')"
            grep -E '^(error|failures of class)' "$out" | sed 's/^/  /'
        } >&2
    fi
    return 0
}

problems=0
for name in $SERVERS; do
    if ! run "$name"; then
        # Ctrl-C reaches graceexec and a running `graceexec reload` too; the
        # client exits 1 rather than dying of SIGINT, and bash then runs no
        # INT trap (it assumes the child handled it). graceexec's log tells.
        if grep -q '^graceexec\[[0-9]*\]: received SIGINT' "$work/$name.log"; then
            say "interrupted"
            exit 130
        fi
        problems=$((problems + 1))
        say "$name: graceexec's log ends:"
        tail -n 30 "$work/$name.log" | sed 's/^/  /' >&2
        rows+=("| $label | $version | - | - | - | - | - |")
        # Stop what is left of this run before the next one.
        if [ -n "$load" ]; then
            kill -TERM "$load" 2>/dev/null || true
            wait "$load" 2>/dev/null || true
            load=""
        fi
        if [ -n "$ge" ]; then
            kill -TERM "$ge" 2>/dev/null || true
            wait_gone "$ge" 30 || kill -KILL "$ge" 2>/dev/null || true
            wait "$ge" 2>/dev/null || true
            ge=""
        fi
        for pid in $(marked "$marker_prefix\\.$name"); do
            kill -KILL "$pid" 2>/dev/null || true
        done
    fi
done

echo "| server | version | reloads | requests served | failed | longest gap | pids that served |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo "($CLIENTS clients, a new connection per request; gunicorn's pids are its workers, 2 per generation)"

for name in "${failed_servers[@]}"; do
    nongating "$name" || problems=$((problems + 1))
done
[ "$problems" -eq 0 ]
