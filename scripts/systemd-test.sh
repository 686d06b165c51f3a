#!/usr/bin/env bash
# The README's systemd units, run for real: the distribution's systemd boots
# as PID 1 of fresh namespaces (scripts/systemd-ns.sh) and runs the units in
# examples/systemd/ unchanged, on the namespace's own loopback, with graceexec
# at /usr/local/bin/graceexec and a release of examples/server at
# /srv/api/server (both bound in only inside the namespace).
#
# First it checks that README.md shows each unit file verbatim: every file
# under examples/systemd/ follows a `<!-- unit: PATH -->` line there.
#
# Exit status: 0 passed, 1 failed, 77 skipped (cannot run here: not root,
# no namespaces, no cgroup2, no systemd); it prints one line saying why.
# SYSTEMD_TEST_LIFETIME (s, default 300) caps the run once the build is
# done; SYSTEMD_TEST_KEEP=1 keeps the temp dir (PID 1's console and kmsg,
# the journal of a failed run, the request loop's log).
set -euo pipefail
export LC_ALL=C
SELF=$(readlink -f "$0")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
# shellcheck source=scripts/systemd-ns.sh
. "$ROOT/scripts/systemd-ns.sh"
[ "${1:-}" != __ns-init ] || ns_init "$2"

SKIP=77
LIFETIME=${SYSTEMD_TEST_LIFETIME:-300}
URL=http://127.0.0.1:80
PASSED=0 WATCHDOG='' CTL=()

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
secs() { printf '%d.%02ds' $(($1 / 1000)) $(($1 % 1000 / 10)); }
since() { secs $(($(now_ms) - $1)); }
T_ALL=$(now_ms)
ok() { printf 'ok    %-26s %s\n' "$1" "$2"; PASSED=$((PASSED + 1)); }
info() { printf '      %-26s %s\n' "" "$*"; }
fail() {
    set +e
    printf 'FAIL  %-26s %s\n' "$1" "$2"
    if ns_alive; then
        inside journalctl -o short-monotonic --no-pager >"$W/journal.txt" 2>&1
        echo "---- systemctl status"
        sdctl status api.service api.socket 2>&1 | head -n 30
        echo "---- journal, last 60 lines (all of it: SYSTEMD_TEST_KEEP=1, then $W/journal.txt)"
        tail -n 60 "$W/journal.txt"
    elif [ -n "$P" ]; then
        echo "---- PID 1's console and kmsg"
        tail -n 20 "$W/console.log" "$W/kmsg.log"
    fi
    exit 1
}

teardown() {
    local rc=$? t
    trap '' INT TERM
    set +e
    t=$(now_ms)
    [ -z "$WATCHDOG" ] || kill "$WATCHDOG" 2>/dev/null
    ns_down
    [ -z "$P" ] || echo "systemd-test: teardown took $(since "$t"); total $(since "$T_ALL")"
    if [ "${SYSTEMD_TEST_KEEP:-0}" = 1 ]; then echo "systemd-test: kept $W"; else rm -rf "$W"; fi
    exit "$rc"
}
W=$(mktemp -d /tmp/graceexec-systemd.XXXXXX)
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ README drift
check_readme() {
    local out=$W/readme f n=0
    mkdir "$out"
    awk -v out="$out" '
        /^<!-- unit: [^ ]+ -->$/ { name = $3; gsub("/", "_", name); state = 1; next }
        state == 1 && $0 == "```ini" { f = out "/" name; printf "" > f; state = 2; next }
        state == 1 { print "README.md: <!-- unit: " $3 " --> is not followed by ```ini"; exit 1 }
        state == 2 && $0 == "```" { close(f); state = 0; next }
        state == 2 { print > f }' "$ROOT/README.md" || fail readme "README.md's unit markers"
    for f in $(cd "$ROOT" && find examples/systemd -type f | sort); do
        [ -f "$out/${f//\//_}" ] || fail readme "README.md shows no block marked <!-- unit: $f -->"
        diff -u "$out/${f//\//_}" "$ROOT/$f" ||
            fail readme "README.md's block marked <!-- unit: $f --> differs from the file"
        n=$((n + 1))
    done
    [ "$(find "$out" -type f | wc -l)" -eq "$n" ] ||
        fail readme "README.md marks a unit block that has no file under examples/systemd/"
    ok readme "the $n unit files in examples/systemd/ are README.md's blocks, verbatim"
}
check_readme

ns_check
if [ -n "$NS_WHY" ]; then
    echo "systemd-test: skipped: $NS_WHY"
    exit "$SKIP"
fi
for c in cargo curl jq ss; do
    command -v "$c" >/dev/null || fail setup "$c is missing"
done

# ------------------------------------------------------------ build, layout
t=$(now_ms)
(cd "$ROOT" && cargo build --release --locked --quiet --bin graceexec --example server) ||
    fail build "cargo build failed"
echo "systemd-test: $("$SYSTEMD" --version | head -n1); build $(since "$t")"
mkdir -p "$W/bin" "$W/srv/api/releases" "$W/releases" "$W/etc"
# What cargo just built: under CARGO_TARGET_DIR when that is set (relative
# to ROOT, where cargo ran), not a stale target/.
REL=$(cd "$ROOT" && realpath -m "${CARGO_TARGET_DIR:-target}")/release
cp "$REL/graceexec" "$W/bin/"
cp "$REL/examples/server" "$W/srv/api/releases/server"
# Releases are what a deploy puts at /srv/api/server. The good one takes a
# second to be ready, so a `systemctl start` that returned early would show.
printf '#!/bin/sh\nEXAMPLE_SLOW_START_MS=1000 exec /srv/api/releases/server "$@"\n' >"$W/releases/good"
printf '#!/bin/sh\nEXAMPLE_FAIL_GEN=all exec /srv/api/releases/server "$@"\n' >"$W/releases/bad"
# Like the README's deploy script: a running binary is never overwritten.
deploy() {
    install -m 755 "$W/releases/$1" "$W/srv/api/server.new"
    mv -f "$W/srv/api/server.new" "$W/srv/api/server"
}
# The units run as user `api`: if the host has none, the namespace gets a
# passwd and group with one (a free system uid).
if API_UID=$(id -u api 2>/dev/null); then :; else
    API_UID=999
    while getent passwd "$API_UID" >/dev/null || getent group "$API_UID" >/dev/null; do
        API_UID=$((API_UID - 1))
        [ "$API_UID" -gt 100 ] || fail setup "no free system uid for user api"
    done
    { cat /etc/passwd; echo "api:x:$API_UID:$API_UID:graceexec test:/nonexistent:/usr/sbin/nologin"; } >"$W/etc/passwd"
    { cat /etc/group; echo "api:x:$API_UID:"; } >"$W/etc/group"
    chmod 644 "$W/etc/passwd" "$W/etc/group"
fi
ns_units "$W/units"

# ------------------------------------------------------------ boot
# A soft cap for this script (teardown runs); unshare's `timeout -s KILL`
# 20 s later is the hard one.
(
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    sleep "$LIFETIME" &
    s=$!
    wait "$s"
    echo "systemd-test: lifetime cap of ${LIFETIME}s reached" >&2
    kill -TERM $$
) &
WATCHDOG=$!
t=$(now_ms)
ns_up $((LIFETIME + 20)) || fail boot "systemd did not come up"
ok boot "systemd is PID 1 of new namespaces (host pid $P), running after $(since "$t")"

# ------------------------------------------------------------ helpers
get() { inside curl -sS --max-time 10 "$URL$1" 2>&1; }
field() { grep -oE "(^| )$1=[^ ]*" <<<"$2" | head -n1 | sed 's/.*=//'; }
prop() { sdctl show -P "$2" "$1"; }
gstatus() { inside /usr/local/bin/graceexec status --json "${CTL[@]}"; }
serving() { jq -r '[.generations[] | select(.phase == "serving") | "\(.generation) \(.pid)"] | join(",")'; }
jcursor() { inside journalctl -n1 -q --show-cursor -o cat | sed -n 's/^-- cursor: //p'; }
wait_for() { # SECONDS CMD...: poll until CMD succeeds, false at the deadline
    local end=$(($(now_ms) + $1 * 1000))
    shift
    until "$@"; do
        [ "$(now_ms)" -lt "$end" ] || return 1
        sleep 0.1
    done
}
unit_state() { echo "$(prop "$1" ActiveState)/$(prop "$1" SubState)"; }

# `systemctl start` returns only once generation 1 is ready. Asked before
# any request (a request would just wait in the queue of graceexec's socket
# until the server is ready), graceexec and systemd both say generation 1
# serves; then it answers.
check_start() { # NAME
    local t out st gen1 text
    deploy good
    t=$(now_ms)
    out=$(sdctl start api.service 2>&1) || fail "$1" "systemctl start failed: $out"
    local took; took=$(since "$t")
    st=$(gstatus) || fail "$1" "graceexec status right after the start: $st"
    text=$(prop api.service StatusText)
    gen1=$(serving <<<"$st")
    [ "${gen1%% *}" = 1 ] || fail "$1" "right after the start, graceexec status says: $st"
    [ "$text" = "serving: generation 1 (pid ${gen1#* })" ] || fail "$1" "systemd's StatusText: $text"
    [ "$(unit_state api.service)" = active/running ] || fail "$1" "unit is $(unit_state api.service)"
    out=$(get /) || fail "$1" "no answer after the start: $out"
    PID_NOW=$(field pid "$out")
    [ "$PID_NOW" = "${gen1#* }" ] || fail "$1" "generation 1 is pid ${gen1#* }, but this answered: $out"
    ok "$1" "systemctl start returned after $took, with generation 1 (pid $PID_NOW) serving"
    info "graceexec status: generation 1 serving; systemd: active/running, \"$text\"; it answers"
}

# graceexec's STATUS= for the end of a reload may reach systemd just after
# the reply that ends ExecReload=.
# shellcheck disable=SC2053 # $1 is a pattern
status_text_is() { [[ "$(prop api.service StatusText)" == $1 ]]; }

check_reload() { # NAME: a reload through ExecReload= gets a new server
    local t out body old=$PID_NOW gen
    deploy good
    t=$(now_ms)
    out=$(sdctl reload api.service 2>&1) || fail "$1" "systemctl reload failed: $out"
    local took; took=$(since "$t")
    body=$(get /) || fail "$1" "no answer after the reload: $body"
    PID_NOW=$(field pid "$body") gen=$(field gen "$body")
    [ "$PID_NOW" != "$old" ] || fail "$1" "pid $old still answers after the reload"
    [ "$(gstatus | serving)" = "$gen $PID_NOW" ] || fail "$1" "graceexec status: $(gstatus)"
    [ "$(unit_state api.service)" = active/running ] || fail "$1" "unit is $(unit_state api.service)"
    wait_for 5 status_text_is "serving: generation $gen (pid $PID_NOW)" ||
        fail "$1" "systemd's StatusText: $(prop api.service StatusText)"
    ok "$1" "systemctl reload exited 0 after $took; pid $PID_NOW (gen $gen) answers, not $old"
    info "systemd: \"$(prop api.service StatusText)\""
}

check_bad_reload() { # NAME: a bad release fails the reload; the old server goes on
    local t out rc=0 body cur
    deploy bad
    cur=$(jcursor)
    t=$(now_ms)
    out=$(sdctl reload api.service 2>&1) || rc=$?
    local took; took=$(since "$t")
    [ "$rc" -ne 0 ] || fail "$1" "systemctl reload exited 0 on a bad release"
    body=$(get /) || fail "$1" "no answer after the failed reload: $body"
    [ "$(field pid "$body")" = "$PID_NOW" ] || fail "$1" "pid $PID_NOW does not answer: $body"
    [ "$(unit_state api.service)" = active/running ] || fail "$1" "unit is $(unit_state api.service)"
    [ "$(gstatus | jq -r .last_reload.ok)" = false ] || fail "$1" "graceexec status: $(gstatus)"
    wait_for 5 status_text_is "serving: generation * (pid $PID_NOW); reload failed: *" ||
        fail "$1" "systemd's StatusText: $(prop api.service StatusText)"
    ok "$1" "systemctl reload exited $rc after $took; pid $PID_NOW still answers; unit active/running"
    info "systemctl: $(head -n1 <<<"$out")"
    info "ExecReload: $(inside journalctl -u api.service --after-cursor "$cur" -o cat | grep -m1 '^graceexec: reload of .* failed' || true)"
    info "systemd: \"$(prop api.service StatusText)\""
    deploy good
}

# Stops with nothing left for systemd to kill: the unit's cgroup is gone,
# the processes it held are gone, and systemd logged no kill.
check_stopped() { # NAME JOURNAL-CURSOR PIDS-BEFORE TOOK WHAT CGROUP
    local cg=$6 p log
    for p in $3; do
        ! inside test -e "/proc/$p" || fail "$1" "pid $p is still running"
    done
    ! inside test -e "/sys/fs/cgroup$cg" || fail "$1" "cgroup $cg is still there"
    [ "$(prop api.service ActiveState)/$(prop api.service Result)" = inactive/success ] ||
        fail "$1" "unit is $(prop api.service ActiveState), result $(prop api.service Result)"
    seen() { log=$(inside journalctl -u api.service --after-cursor "$2" -o cat) && grep -q '^Stopped ' <<<"$log"; }
    wait_for 10 seen "$@" || fail "$1" "no 'Stopped' line in the journal"
    ! grep -E 'Killing process|SIGKILL' <<<"$log" || fail "$1" "systemd had to kill"
    ok "$1" "systemctl stop returned after $4; $5"
    info "exit status $(prop api.service ExecMainStatus); nothing left in $cg (was: ${3//$'\n'/ })"
    info "journal: $(grep -vE '^(Stopping|Stopped) ' <<<"$log" | tail -n 3 | tr '\n' '|')"
}

# A bounded loop of requests while CMD runs, one at a time from each of
# CLIENTS (default 1) clients; what each got. Sets TOTAL BAD REFUSED
# STRANDED (no answer within 10s) DURING (requests that overlapped CMD)
# SLOWEST PIDS (that answered, in order) TOOK and FAILED (the first
# failures). PIDS must be the old and then a new one, or PIDS_WANT pids.
loop() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    inside bash -c 'set -f; one() { for ((i = 0; i < 5000; i++)); do
        [ ! -e "$1/loop.stop" ] || break
        s=$EPOCHREALTIME; b=$(curl -sS --max-time 10 "$2/" 2>&1); rc=$?
        echo "$s $EPOCHREALTIME $rc" $b >>"$1/loop.log"
    done; }
    for ((c = 0; c < $3; c++)); do one "$1" "$2" & done; wait' loop "$NS_RUN" "$URL" "${CLIENTS:-1}"
}
lines() { [ "$(wc -l <"$W/loop.log")" -ge "$1" ]; }
under_load() { # NAME CMD...
    local name=$1 looper t t0 t1 n out clients=${CLIENTS:-1}
    shift
    rm -f "$W/loop.stop"
    : >"$W/loop.log"
    NS_TIMEOUT=150 loop &
    looper=$!
    wait_for 20 lines $((20 * clients)) || fail "$name" "the request loop did not get going"
    t0=$EPOCHREALTIME
    t=$(now_ms)
    out=$("$@" 2>&1) || fail "$name" "$* failed: $out"
    TOOK=$(since "$t")
    t1=$EPOCHREALTIME
    n=$(wc -l <"$W/loop.log")
    wait_for 30 lines $((n + 20 * clients)) || fail "$name" "the request loop stalled after it"
    touch "$W/loop.stop"
    wait "$looper" || fail "$name" "the request loop failed"
    read -r TOTAL BAD REFUSED STRANDED DURING SLOWEST PIDS < <(awk -v t0="$t0" -v t1="$t1" '
        { total++; if ($3 != 0) bad++; if ($3 == 7) refused++; if ($3 == 28) stranded++
          if ($1 < t1 && $2 > t0) { during++; if ($2 - $1 > slow) slow = $2 - $1 }
          split($4, a, "="); if ($3 == 0 && !(a[2] in seen)) { seen[a[2]] = 1; pids = pids (pids ? "," : "") a[2] } }
        END { printf "%d %d %d %d %d %.2fs %s\n", total, bad, refused, stranded, during, slow, pids }' "$W/loop.log")
    FAILED=$(awk '$3 != 0' "$W/loop.log" | head -n3 | tr '\n' '|')
    [ "$DURING" -gt 0 ] || fail "$name" "no request overlapped it"
    local commas=$((${PIDS_WANT:-2} - 1)) got=${PIDS//[^,]/}
    [ "${#got}" -eq "$commas" ] || fail "$name" "answered by pids $PIDS, not by the old and then a new one"
}

# graceexec is SIGKILLed; systemd restarts it (Restart=on-failure). Returns
# once a new graceexec serves.
restarted() { # OLD-MAINPID: a new graceexec serves
    local new
    new=$(prop api.service MainPID) && [ "$new" != 0 ] && [ "$new" != "$1" ] &&
        [ -n "$(gstatus 2>/dev/null | serving)" ]
}
crash() {
    local old
    old=$(prop api.service MainPID)
    inside kill -KILL "$old"
    wait_for 30 restarted "$old"
}

# shellcheck disable=SC2016 # the inner shell expands these, inside the namespace
cgroup_pids() { inside sh -c 'cat $(find "/sys/fs/cgroup$1" -name cgroup.procs)' sh "$1"; }

# ------------------------------------------------------------ examples/systemd/api.service
cp "$ROOT/examples/systemd/api.service" "$W/units/"
sdctl daemon-reload
CTL=(--name api)
echo "== examples/systemd/api.service: graceexec binds 0.0.0.0:80, runs as api"
check_start "start (Type=notify)"
uid=$(inside sed -n 's/^Uid:\t\([0-9]*\).*/\1/p' "/proc/$PID_NOW/status")
[ "$uid" = "$API_UID" ] || fail "--user api" "the server runs as uid $uid"
check_reload "reload"
check_bad_reload "reload, bad release"

# A request in flight when the stop comes is answered.
cg=$(prop api.service ControlGroup)
pids=$(cgroup_pids "$cg")
inside curl -sS --max-time 20 "$URL/slow?ms=3000" >"$W/slow.out" 2>&1 &
slow=$!
accepted() { local c; c=$(inside ss -Htnp state established '( sport = :80 )') && grep -q '"server"' <<<"$c"; }
wait_for 10 accepted || fail "stop drains" "the slow request was never accepted"
cur=$(jcursor)
t=$(now_ms)
out=$(sdctl stop api.service 2>&1) || fail "stop drains" "systemctl stop failed: $out"
took=$(since "$t")
wait "$slow" || fail "stop drains" "the request in flight failed: $(cat "$W/slow.out")"
grep -q "^pid=$PID_NOW " "$W/slow.out" || fail "stop drains" "request in flight: $(cat "$W/slow.out")"
check_stopped "stop drains" "$cur" "$pids" "$took" "the request in flight (3s) was answered" "$cg"

check_start "start again"

# --fdstore: graceexec's own sockets wait in systemd's store while it
# restarts. systemd 252 keeps the store across `systemctl restart` and a
# restart after a crash (Restart=on-failure), and empties it at a stop.
stored() { prop api.service NFileDescriptorStore; }
n=$(stored)
[ "$n" -ge 4 ] || fail "fdstore" "systemd holds $n of graceexec's sockets"
under_load "restart (--fdstore)" sdctl restart api.service
[ "$BAD" -eq 0 ] || fail "restart (--fdstore)" "$BAD of $TOTAL requests failed ($REFUSED refused): $FAILED"
ok "restart (--fdstore)" "$TOTAL requests, $DURING during the ${TOOK} restart (slowest $SLOWEST): 0 failed, 0 refused"
info "answered by pids $PIDS; systemd held $n sockets, and $(stored) after the restart"
under_load "crash (--fdstore)" crash
[ "$REFUSED" -eq 0 ] || fail "crash (--fdstore)" "$REFUSED of $TOTAL requests refused: $FAILED"
ok "crash (--fdstore)" "graceexec SIGKILLed: $TOTAL requests, $DURING during the ${TOOK} restart: 0 refused, $BAD failed"
info "answered by pids $PIDS; a failure is a request the killed server had accepted${FAILED:+: $FAILED}"

# A canary split when graceexec restarts, then when it is killed: nothing
# waits for good in a socket the next start does not take. At a restart
# the old generation and the canary first finish what waits in theirs;
# after a kill, what waits in the canary's is reset (counted in BAD).
canary() {
    local out
    out=$(inside /usr/local/bin/graceexec reload --name api --canary 25 2>&1) ||
        fail "$1" "reload --canary 25: $out"
}
canary "canary restart (--fdstore)"
CLIENTS=8 PIDS_WANT=3 under_load "canary restart (--fdstore)" sdctl restart api.service
[ "$BAD" -eq 0 ] ||
    fail "canary restart (--fdstore)" "$BAD of $TOTAL requests failed ($REFUSED refused, $STRANDED never answered): $FAILED"
ok "canary restart (--fdstore)" "8 clients, $TOTAL requests, $DURING during the ${TOOK} restart from a 75/25 split: 0 failed"
info "answered by pids $PIDS: the old generation, the canary, the new one"
canary "canary crash (--fdstore)"
CLIENTS=8 PIDS_WANT=3 under_load "canary crash (--fdstore)" crash
[ "$((REFUSED + STRANDED))" -eq 0 ] ||
    fail "canary crash (--fdstore)" "of $TOTAL requests, $REFUSED refused and $STRANDED never answered: $FAILED"
ok "canary crash (--fdstore)" "graceexec SIGKILLed during a 75/25 split: $TOTAL requests, $DURING during the ${TOOK} restart: 0 refused, 0 unanswered"
info "$BAD failed: the canary's share of the meantime, reset at the start, and requests the killed servers had accepted"

# --listen changed between restarts (a drop-in): a new address in front
# of 0.0.0.0:80, then gone again. systemd holds 80's sockets meanwhile,
# under their old position: they are taken back, never bound anew.
listen_in_front() { # ADDR, or nothing: the README's unit as it is
    local d=$W/units/api.service.d line
    rm -rf "$d"
    if [ -n "$1" ]; then
        line=$(sed -n "s|^ExecStart=\(.*\)--listen 0.0.0.0:80 |ExecStart=\1--listen $1 --listen 0.0.0.0:80 |p" \
            "$ROOT/examples/systemd/api.service")
        [ -n "$line" ] || fail "listen changed" "no --listen 0.0.0.0:80 in examples/systemd/api.service"
        mkdir "$d" && printf '[Service]\nExecStart=\n%s\n' "$line" >"$d/listen.conf"
    fi
    sdctl daemon-reload
}
stored_is() { [ "$(stored)" = "$1" ]; }
listen_in_front 127.0.0.1:8081
under_load "listen added (--fdstore)" sdctl restart api.service
[ "$BAD" -eq 0 ] || fail "listen added (--fdstore)" "$BAD of $TOTAL requests failed ($REFUSED refused): $FAILED"
out=$(inside curl -sS --max-time 5 http://127.0.0.1:8081/ 2>&1) || fail "listen added (--fdstore)" "127.0.0.1:8081: $out"
wait_for 5 stored_is 8 || fail "listen added (--fdstore)" "systemd holds $(stored) sockets, not 8"
ok "listen added (--fdstore)" "0.0.0.0:80 second now: $TOTAL requests, $DURING during the ${TOOK} restart: 0 failed"
info "127.0.0.1:8081 answers ($out); systemd holds 8 sockets"
listen_in_front ""
under_load "listen removed (--fdstore)" sdctl restart api.service
[ "$BAD" -eq 0 ] || fail "listen removed (--fdstore)" "$BAD of $TOTAL requests failed ($REFUSED refused): $FAILED"
rc=0 && out=$(inside curl -sS --max-time 5 http://127.0.0.1:8081/ 2>&1) || rc=$?
[ "$rc" = 7 ] || fail "listen removed (--fdstore)" "127.0.0.1:8081 after its removal: curl exit $rc: $out"
wait_for 5 stored_is 4 || fail "listen removed (--fdstore)" "systemd holds $(stored) sockets, not 4"
ok "listen removed (--fdstore)" "0.0.0.0:80 first again: $TOTAL requests, $DURING during the ${TOOK} restart: 0 failed"
info "127.0.0.1:8081 refuses connections; systemd holds 4 sockets"
sdctl stop api.service >/dev/null
[ "$(stored)" = 0 ] || fail "fdstore" "systemd still holds $(stored) sockets after a stop"
ok "fdstore, stop" "systemctl stop empties the store: the next start binds anew"

# ------------------------------------------------------------ examples/systemd/socket/
rm "$W/units/api.service"
cp "$ROOT/examples/systemd/socket/api.socket" "$ROOT/examples/systemd/socket/api.service" "$W/units/"
sdctl daemon-reload
CTL=(--control /run/api/control.sock)
echo "== examples/systemd/socket/: systemd holds 0.0.0.0:80, graceexec adopts it"
out=$(sdctl start api.socket 2>&1) || fail "socket activation" "systemctl start api.socket: $out"
[ "$(prop api.service ActiveState)" = inactive ] || fail "socket activation" "api.service started early"
t=$(now_ms)
body=$(get /info) || fail "socket activation" "no answer: $body"
took=$(since "$t")
PID_NOW=$(field pid "$body")
[ "$(field listen_fdnames "$body")" = http ] || fail "socket activation" "the server got: $body"
[ "$(unit_state api.service)" = active/running ] || fail "socket activation" "api.service is $(unit_state api.service)"
# The very socket systemd holds is the server's fd 3.
sock=$(inside readlink "/proc/$PID_NOW/fd/3")
# shellcheck disable=SC2016
held=$(inside sh -c 'for f in /proc/1/fd/*; do readlink "$f"; done')
grep -qxF "$sock" <<<"$held" || fail "socket activation" "PID 1 holds no $sock"
[ "$(gstatus | jq -r '.sockets | map(.name) | join(",")')" = http ] || fail "socket activation" "$(gstatus)"
ok "socket activation" "the first connection started api.service; answered after $took by pid $PID_NOW"
info "the server's fd 3 is PID 1's $sock, passed on as \"http\"; graceexec status: $(gstatus | serving | sed 's/ / pid /;s/^/generation /') serving"
check_reload "reload (--control)"
check_bad_reload "reload, bad release"

under_load "restart" sdctl restart api.service
[ "$BAD" -eq 0 ] || fail "restart" "$BAD of $TOTAL requests failed ($REFUSED refused): $FAILED"
ok "restart" "$TOTAL requests, $DURING during the ${TOOK} restart (slowest $SLOWEST): 0 failed, 0 refused"
info "answered by pids $PIDS; api.socket stayed $(prop api.socket ActiveState)"

cg=$(prop api.service ControlGroup)
pids=$(cgroup_pids "$cg")
cur=$(jcursor)
t=$(now_ms)
out=$(sdctl stop api.service 2>&1) || fail "stop" "systemctl stop failed: $out"
check_stopped "stop" "$cur" "$pids" "$(since "$t")" "api.socket still $(prop api.socket ActiveState)" "$cg"
sdctl stop api.socket >/dev/null
echo "systemd-test: passed $PASSED checks in $(since "$T_ALL")"
