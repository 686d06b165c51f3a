#!/usr/bin/env bash
# The README's Ansible rolling deploy, run for real: ansible-core from PyPI
# (in the venv under target/ when the system Python lacks it) plays
# examples/deploy/rollout.yml against two instances on this host
# (examples/deploy/inventory.yml: api-1 and api-2, local connection), each
# run here under graceexec on a loopback port of its own, serving
# examples/python/server.py through a release script. It checks that:
#   - the README's play is rollout.yml, byte for byte;
#   - a good release rolls across both under load, with no request lost,
#     and both then answer with it;
#   - a bad release (a server that exits 1 at start) fails on api-1 and ends
#     the play: api-1 still serves the previous release (graceexec kept it)
#     and has it back in place, api-2 is untouched and serves it too;
#   - both instances stop with exit status 0.
# Everything it starts or writes goes away when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh

fail() {
    echo "ansible-test: FAILED: $*" >&2
    exit 1
}

# The README's play: the yaml block right after its marker line.
readme_play=$(awk '
    /^<!-- examples\/deploy\/rollout\.yml/ { marked = 1; next }
    marked && /^```yaml$/ { inside = 1; next }
    marked && !inside { exit }
    inside && /^```$/ { exit }
    inside { print }
' README.md)
[ "$readme_play" = "$(cat examples/deploy/rollout.yml)" ] ||
    fail "README's Ansible play differs from examples/deploy/rollout.yml:
$(diff <(printf '%s\n' "$readme_play") examples/deploy/rollout.yml)"
echo "ansible-test: the README's play is examples/deploy/rollout.yml"

python_with "ansible=ansible-core==2.19.*"
ansible=$py
command -v python3 >/dev/null || apt_install python3
cargo build --quiet --bin graceexec --example load
debug=${CARGO_TARGET_DIR:-target}/debug
[[ $debug == /* ]] || debug=$PWD/$debug
PATH=$debug:$PATH

work=$(mktemp -d)
pids=()  # graceexec instances and load generators
declare -A addr ge load
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The control sockets, Ansible's own files and the deployed instances, all
# under $work.
export XDG_RUNTIME_DIR=$work/run
export ANSIBLE_HOME=$work/ansible ANSIBLE_LOCAL_TEMP=$work/ansible/tmp
export ANSIBLE_REMOTE_TEMP=$work/ansible/remote ANSIBLE_NOCOLOR=1 ANSIBLE_PIPELINING=1
mkdir -m 700 "$XDG_RUNTIME_DIR"
deploy_root=$work/srv
mkdir -p "$deploy_root/api-1" "$deploy_root/api-2" "$work/build"

# release NAME: a build of the api that answers "pid=P release=NAME".
release() {
    mkdir -p "$work/build/$1"
    printf '#!/bin/sh\nexport APP_RELEASE=%s\nexec python3 %s\n' \
        "$1" "$PWD/examples/python/server.py" >"$work/build/$1/server"
    chmod 755 "$work/build/$1/server"
}
release r1
release r2
mkdir -p "$work/build/r3"
printf '#!/bin/sh\necho "r3: cannot read /etc/api/config.toml" >&2\nexit 1\n' >"$work/build/r3/server"
chmod 755 "$work/build/r3/server"

# wait_for PID FILE TEXT: until TEXT is in FILE (at most 30 s), while PID
# runs.
wait_for() {
    local _
    for _ in $(seq 1 600); do
        grep -q "$3" "$2" && return 0
        kill -0 "$1" 2>/dev/null || { cat "$2" >&2; fail "pid $1 exited, writing no \"$3\" in $2"; }
        sleep 0.05
    done
    cat "$2" >&2
    fail "timed out waiting for \"$3\" in $2"
}

# answer HOST: what HOST's server answers on a new connection.
answer() {
    python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().strip())' "http://${addr[$1]}/"
}

# expect_release HOST NAME
expect_release() {
    local got
    got=$(answer "$1") || fail "$1 does not answer"
    [[ $got == *" release=$2" ]] || fail "$1 answers \"$got\", not release $2"
    echo "ansible-test: $1 answers: $got"
}

# generations HOST: the generation numbers graceexec runs for HOST.
generations() {
    graceexec status --name "$1" --json |
        python3 -c 'import json, sys; print(*[g["generation"] for g in json.load(sys.stdin)["generations"]])'
}

play() {
    "$ansible" -m ansible playbook -i examples/deploy/inventory.yml examples/deploy/rollout.yml \
        -e "deploy_root=$deploy_root" -e "release=$work/build/$1/server" >"$work/play-$1.out" 2>&1
}

for host in api-1 api-2; do
    cp "$work/build/r1/server" "$deploy_root/$host/server"
    graceexec --name "$host" --listen 127.0.0.1:0 --ready notify -- "$deploy_root/$host/server" \
        2>"$work/$host.log" &
    ge[$host]=$!
    pids+=($!)
    wait_for "${ge[$host]}" "$work/$host.log" "generation 1 ready"
    addr[$host]=$(grep -o -m1 'bound 127\.0\.0\.1:[0-9]*' "$work/$host.log" | cut -d' ' -f2)
    expect_release "$host" r1
done

echo "ansible-test: rolling out r2 under load"
for host in api-1 api-2; do
    "$debug/examples/load" --addr "${addr[$host]}" --clients 1 --seconds 120 \
        --stop-file "$work/stop-load" >"$work/load-$host.out" &
    load[$host]=$!
    pids+=($!)
done
start=$(date +%s%N)
play r2 || { cat "$work/play-r2.out"; fail "the play of the good release r2 failed"; }
echo "ansible-test: play of r2 took $((($(date +%s%N) - start) / 1000000)) ms"
touch "$work/stop-load"
for host in api-1 api-2; do
    wait "${load[$host]}" || { cat "$work/load-$host.out"; fail "requests to $host failed during the rollout"; }
    echo "ansible-test: $host under load: $(grep -E 'served|failed' "$work/load-$host.out" | tr '\n' ' ')"
done
for host in api-1 api-2; do
    expect_release "$host" r2
done

echo "ansible-test: rolling out the bad release r3"
start=$(date +%s%N)
if play r3; then
    cat "$work/play-r3.out"
    fail "the play of the bad release r3 succeeded"
fi
echo "ansible-test: play of r3 failed, as it should, in $((($(date +%s%N) - start) / 1000000)) ms"
grep -q 'exited with status 1 before it was ready' "$work/play-r3.out" ||
    { cat "$work/play-r3.out"; fail "the play's failure does not carry graceexec's reason"; }
grep -q 'r3: cannot read /etc/api/config.toml' "$work/play-r3.out" ||
    { cat "$work/play-r3.out"; fail "the play's failure does not carry the server's last lines"; }
# api-1: the reload failed, graceexec kept generation 2, the play put r2
# back; api-2: never reached, nothing reloaded, nothing copied.
expect_release api-1 r2
cmp -s "$deploy_root/api-1/server" "$work/build/r2/server" || fail "api-1 does not have r2 back in place"
[ "$(generations api-1)" = 2 ] || fail "api-1 runs generations $(generations api-1), not 2 alone"
expect_release api-2 r2
cmp -s "$deploy_root/api-2/server" "$work/build/r2/server" || fail "api-2's release was changed"
[ "$(generations api-2)" = 2 ] || fail "api-2 runs generations $(generations api-2): it was reloaded"
# Left by the rollout of r2, and not replaced by one of r3.
cmp -s "$deploy_root/api-2/server.prev" "$work/build/r1/server" || fail "api-2's server.prev was changed"
[ ! -e "$deploy_root/api-2/server.new" ] || fail "the play copied r3 to api-2"
! grep '\[api-2\]' "$work/play-r3.out" || fail "the play ran tasks on api-2"

for host in api-1 api-2; do
    graceexec stop --name "$host" >/dev/null || fail "graceexec stop --name $host failed"
    status=0
    wait "${ge[$host]}" || status=$?
    [ "$status" -eq 0 ] || { cat "$work/$host.log"; fail "graceexec of $host exited with status $status"; }
done
pids=()
echo "ansible-test: both instances stopped with exit status 0"
echo "ansible-test: every check passed"
