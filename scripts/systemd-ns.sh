# shellcheck shell=bash
# Sourced by scripts/systemd-test.sh: boot the distribution's systemd as PID 1
# of fresh pid, mount, uts, ipc, cgroup and net namespaces, run commands in
# them, and tear everything down. Facts this rests on (systemd 252, Debian 12):
# - systemd reads its unit path from $SYSTEMD_UNIT_PATH and its generators
#   from $SYSTEMD_GENERATOR_PATH. Pointing both at our own directories means
#   no unit of the host is ever loaded: the default sysinit.target would run
#   systemd-tmpfiles --remove, which empties the shared /tmp. The README's
#   units keep their default dependencies (Requires=sysinit.target), so the
#   unit directory has a sysinit.target that pulls in nothing.
# - On a hybrid host (cgroup v1 plus a cgroup2 mount) systemd needs a
#   unified hierarchy of its own: a child cgroup of the host's cgroup2, a
#   cgroup namespace rooted there and a fresh cgroup2 mount.
# - The ns gets private /run, /tmp, /var/tmp and /dev (journald's
#   Symlinks=/dev/log would otherwise land in the host's /dev), read-only
#   /proc/sys and /sys, and /dev/console and /dev/kmsg bound to files, so
#   nothing reaches the host's console, kernel log or sysctls.
# - `unshare --fork` ignores SIGTERM and SIGINT while it waits. Teardown
#   sends PID 1 SIGRTMIN+4 (poweroff.target, as `systemctl poweroff`), then
#   SIGKILLs it, which makes the kernel kill everything in the pid
#   namespace; `timeout -s KILL` on unshare (with --kill-child) is the hard
#   cap should the script itself be killed.
# - At poweroff systemd unmounts what it sees, in its own mount namespace
#   (propagation private: the host's mounts stay). `container=` in its
#   environment makes systemd-shutdown skip swapoff and the detaching of
#   loop, DM and MD devices, which no namespace confines.

NS_RUN=/run/graceexec-test    # $W, as seen from inside
SYSTEMD=${SYSTEMD:-/lib/systemd/systemd}
CG='' CG_ROOT='' OWN_CG='' TO_PID='' U='' P=''

# Runs as PID 1 of the new namespaces (`$0 __ns-init W`), then becomes systemd.
ns_init() {
    set -eu
    local w=$1 r=$NS_RUN n
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup   # rooted at our cgroup
    mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
    mkdir -p "$r" /run/systemd/journald.conf.d /run/ns-dev
    mount --bind "$w" "$r"
    printf '[Journal]\nStorage=volatile\nReadKMsg=no\n' >/run/systemd/journald.conf.d/test.conf
    # A /dev of our own: the usual nodes bound from the host's, nothing else.
    mount -t tmpfs -o mode=755,nosuid tmpfs /run/ns-dev
    for n in null zero full random urandom tty; do
        : >"/run/ns-dev/$n" && mount --bind "/dev/$n" "/run/ns-dev/$n"
    done
    for n in console kmsg; do   # PID 1 writes its log here: kept in $W
        : >"/run/ns-dev/$n" && mount --bind "$r/$n.log" "/run/ns-dev/$n"
    done
    mkdir /run/ns-dev/pts /run/ns-dev/shm
    mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /run/ns-dev/pts
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /run/ns-dev/shm
    ln -s pts/ptmx /run/ns-dev/ptmx && ln -s /proc/self/fd /run/ns-dev/fd
    for n in 0:stdin 1:stdout 2:stderr; do ln -s "/proc/self/fd/${n%%:*}" "/run/ns-dev/${n#*:}"; done
    mount --move /run/ns-dev /dev
    for n in passwd group; do
        [ ! -e "$r/etc/$n" ] || mount --bind "$r/etc/$n" "/etc/$n"
    done
    mount --bind "$r/srv" /srv
    mount --bind "$r/bin" /usr/local/bin
    [ ! -d /var/log/journal ] || mount -t tmpfs -o mode=755 tmpfs /var/log/journal
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp   # hides $W's path: use $NS_RUN
    ip link set lo up
    # container=: see the header; it must stay.
    exec env -i container=graceexec-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        SYSTEMD_UNIT_PATH="$r/units" SYSTEMD_GENERATOR_PATH="$r/none" \
        SYSTEMD_ENVIRONMENT_GENERATOR_PATH="$r/none" \
        "$SYSTEMD" --system --unit=graceexec-test.target --show-status=no
}

# The units systemd needs besides the tested ones, taken from the host's
# /lib/systemd/system; and stand-ins that pull in nothing.
ns_units() {
    local u=$1 lib=/lib/systemd/system f
    mkdir -p "$u" "$W/none"
    for f in systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket \
        systemd-poweroff.service poweroff.target shutdown.target umount.target final.target \
        sockets.target network.target; do
        ln -s "$lib/$f" "$u/$f"
    done
    printf '[Unit]\nDescription=%s\nDefaultDependencies=no\n' \
        'sysinit.target stand-in: nothing of the host starts' >"$u/sysinit.target"
    printf '[Unit]\nDescription=%s\nDefaultDependencies=no\nWants=%s\n' \
        'graceexec test boot' systemd-journald.service >"$u/graceexec-test.target"
}

# Can this machine run it at all? Sets NS_WHY to the reason if not, and
# creates our cgroup if so.
NS_WHY=''
# shellcheck disable=SC2034 # NS_WHY is read by the caller
ns_check() {
    local c e
    [ "$(id -u)" -eq 0 ] || { NS_WHY="needs root (namespaces, cgroups, port 80)"; return; }
    for c in unshare nsenter timeout findmnt ip; do
        command -v "$c" >/dev/null || { NS_WHY="no $c"; return; }
    done
    [ -x "$SYSTEMD" ] || { NS_WHY="no systemd at $SYSTEMD"; return; }
    CG_ROOT=$(findmnt -n -o TARGET -t cgroup2 | head -n1)
    [ -n "$CG_ROOT" ] || { NS_WHY="no cgroup2 mount"; return; }
    e=$(unshare --pid --fork --mount --uts --ipc --cgroup --net true 2>&1) ||
        { NS_WHY="cannot create namespaces: $e"; return; }
    OWN_CG=$(sed -n 's/^0:://p' /proc/self/cgroup)
    OWN_CG=${OWN_CG%/}
    CG=$CG_ROOT$OWN_CG/${W##*/}
    mkdir "$CG" 2>/dev/null || { CG=; NS_WHY="cannot create a cgroup under $CG_ROOT$OWN_CG"; }
}

# A session of its own: Ctrl-C reaches only the script, whose teardown ends
# these commands while their nsenter still waits to reap them. (Killed by
# SIGINT, nsenter would leave them to the host's init, which may reap late.)
inside() { setsid timeout -k 5 "${NS_TIMEOUT:-30}" nsenter -t "$P" -a -- "$@"; }
sdctl() { inside systemctl --no-pager "$@"; }

child_of() { awk '{print $1}' "/proc/$1/task/$1/children" 2>/dev/null || true; }

# Boot; sets P (host pid of the namespace's PID 1). $1: hard cap in seconds.
ns_up() {
    : >"$W/console.log" && : >"$W/kmsg.log"
    # shellcheck disable=SC2016 # expanded by sh
    timeout -s KILL "$1" sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG" \
        unshare --pid --fork --kill-child --mount --propagation private --mount-proc \
        --uts --ipc --cgroup --net -- bash "$SELF" __ns-init "$W" \
        >"$W/unshare.log" 2>&1 </dev/null &
    TO_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        U=$(child_of "$TO_PID") && [ -n "$U" ] && P=$(child_of "$U")
        [ -n "$P" ] && [ "$(cat "/proc/$P/comm" 2>/dev/null)" = systemd ] && break
        P=
        sleep 0.1
    done
    [ -n "$P" ] || { cat "$W/unshare.log" >&2; return 1; }
    # unshare itself sits in the namespace's root cgroup, outside its pid ns:
    # systemd's GetUnitProcesses("-.slice") fails with EIO until it leaves.
    echo "$U" >"$CG_ROOT$OWN_CG/cgroup.procs"
    for ((i = 0; i < 100; i++)); do
        [ -S "/proc/$P/root/run/systemd/private" ] && break
        sleep 0.1
    done
    NS_TIMEOUT=60 sdctl is-system-running --wait >/dev/null ||
        { sdctl --failed >&2; return 1; }
}

# Still the namespace's PID 1 (and not a recycled pid)?
ns_alive() { [ -n "$P" ] && grep -qsE "^0::$OWN_CG/${W##*/}(/|\$)" "/proc/$P/cgroup"; }

# Our commands in the namespace (nsenter'd: in its pid namespace, not in
# systemd's cgroups). They must be gone before systemd-shutdown runs: it
# stops every process there (kill(-1, SIGSTOP)); nsenter, waiting for its
# child with WUNTRACED, then stops itself and never reaps it, and
# systemd-shutdown waits 90s for that zombie.
ns_clients() {
    local ns pid
    ns=$(readlink "/proc/$P/ns/pid") || return 0
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [ "$(readlink "/proc/$pid/ns/pid" 2>/dev/null)" = "$ns" ] || continue
        grep -qsE "^0::$OWN_CG/${W##*/}(/|\$)" "/proc/$pid/cgroup" || echo "$pid"
    done
}

ns_down() {
    local i pid
    if ns_alive; then
        for pid in $(ns_clients); do kill -KILL "$pid" 2>/dev/null; done
        for ((i = 0; i < 30; i++)); do [ -z "$(ns_clients)" ] && break; sleep 0.1; done
        # systemd(1): SIGRTMIN+4 starts poweroff.target, like `systemctl
        # poweroff`, with no client of ours left inside.
        kill -s RTMIN+4 "$P"
        for ((i = 0; i < 100; i++)); do ns_alive || break; sleep 0.1; done
    fi
    [ -z "$P" ] || ! ns_alive || kill -KILL "$P" 2>/dev/null
    if [ -n "$CG" ] && [ -d "$CG" ]; then
        find "$CG" -name cgroup.procs -exec cat {} + 2>/dev/null |
            while read -r pid; do kill -KILL "$pid" 2>/dev/null; done
    fi
    if [ -n "$TO_PID" ]; then
        for ((i = 0; i < 50; i++)); do kill -0 "$TO_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$TO_PID" 2>/dev/null; then
            [ -z "$U" ] || kill -KILL "$U" 2>/dev/null
            kill -KILL "$TO_PID" 2>/dev/null
        fi
        wait "$TO_PID" 2>/dev/null
    fi
    if [ -n "$CG" ]; then
        for ((i = 0; i < 30; i++)); do
            [ -d "$CG" ] || break
            find "$CG" -depth -type d -exec rmdir {} + 2>/dev/null
            [ -d "$CG" ] && sleep 0.1
        done
        [ ! -d "$CG" ] || echo "systemd-test: WARNING: cgroup $CG is still there" >&2
    fi
}
