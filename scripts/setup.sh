#!/bin/sh
# What the tests use beyond the Rust toolchain, installed when missing (one
# apt-get update, one install):
# - Perl's Server::Starter (libserver-starter-perl), whose own
#   server_ports() checks what `--compat server-starter` exports;
# - strace, for the test that sees graceexec kill a group before it reaps
#   its leader;
# - Go (golang-go), for the test that builds and runs examples/go;
# - curl, jq and ss (iproute2), which scripts/systemd-test.sh drives the
#   units with.
set -eu
cd "$(dirname "$0")/.."
missing=""
need() { # COMMAND-OR-CHECK PACKAGE WHAT-FAILS
    if ! sh -c "$1" >/dev/null 2>&1; then
        missing="$missing $2"
        whats="${whats:-}$2: $3; "
    fi
}
need "command -v go" golang-go "the Go example's test (run with --ignored)"
need "command -v strace" strace "the reaping test (run with --ignored)"
need "perl -MServer::Starter -e1" libserver-starter-perl "its interop test (run with --ignored)"
need "command -v curl" curl "scripts/systemd-test.sh"
need "command -v jq" jq "scripts/systemd-test.sh"
need "command -v ss" iproute2 "scripts/systemd-test.sh"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "setup: missing (apt-get install$missing); what fails without them: $whats" >&2
    fi
fi
# prometheus_client's own parser reads the --metrics-file in a test: into the
# project's venv (target/python) when the python3 on PATH lacks it.
bash -c '. scripts/deps.sh && python_with prometheus_client=prometheus_client && echo "$py" > target/python-for-tests'
