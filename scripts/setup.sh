#!/bin/sh
# What the tests use beyond the Rust toolchain, installed when missing:
# Perl's Server::Starter (Debian's libserver-starter-perl), whose own
# server_ports() checks what `--compat server-starter` exports; strace, for
# the test that sees graceexec kill a group before it reaps its leader; Go
# (Debian's golang-go), for the test that builds and runs examples/go.
set -eu
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go >/dev/null
    else
        echo "setup: go is missing (apt-get install golang-go); the Go example's test (run with --ignored) will fail" >&2
    fi
fi
if ! command -v strace >/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null
    else
        echo "setup: strace is missing (apt-get install strace); the reaping test (run with --ignored) will fail" >&2
    fi
fi
if ! perl -MServer::Starter -e1 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libserver-starter-perl >/dev/null
    else
        echo "setup: Server::Starter is missing (apt-get install libserver-starter-perl); its interop test (run with --ignored) will fail" >&2
    fi
fi
# prometheus_client's own parser reads the --metrics-file in a test: into the
# project's venv (target/python) when the python3 on PATH lacks it.
bash -c '. scripts/deps.sh && python_with prometheus_client=prometheus_client && echo "$py" > target/python-for-tests'
