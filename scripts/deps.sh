# shellcheck shell=bash
# Sourced by the bash scripts that install what they need when it is missing
# (reload-bench.sh, interop.sh). Not run on its own.
#
#   apt_install PKG...          Debian packages; `apt-get update` once per run
#   python_with MODULE=REQ...   sets $py to a Python that imports every MODULE,
#                               pip-installing REQ for the missing ones
#
# Each prints one line and exits 1 when it cannot do its job.

deps_updated=""

apt_install() {
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "$(basename "$0"): missing $*; install them (Debian: apt-get install $*)" >&2
        exit 1
    fi
    echo "installing $* (apt-get) ..." >&2
    local log
    log=$(mktemp)
    # An old or empty package list (a fresh machine) finds nothing: refresh
    # it, but once, however many installs follow.
    if { [ -n "$deps_updated" ] || apt-get update -qq >"$log" 2>&1; } &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"$log" 2>&1; then
        deps_updated=1
        rm -f "$log"
        return 0
    fi
    cat "$log" >&2
    rm -f "$log"
    echo "$(basename "$0"): apt-get could not install $*" >&2
    exit 1
}

# The python3 on PATH if it has every module already (pyenv, a venv, Debian's
# python3-matplotlib...). Otherwise a virtualenv under target/ that sees that
# python3's packages and gets the missing ones from pip: Debian 12's own
# python3 refuses `pip install` outside a venv (PEP 668), and has no pip at
# all on a fresh machine. Everything is then run as `$py -m tool`, so no
# console script has to be on PATH.
python_with() {
    local spec mod missing=() venv=target/python
    command -v python3 >/dev/null || apt_install python3
    py=$(python3 -c 'import sys; print(sys.executable)')
    for spec in "$@"; do
        mod=${spec%%=*}
        "$py" -c "import $mod" 2>/dev/null || missing+=("$spec")
    done
    [ ${#missing[@]} -eq 0 ] && return 0

    if ! [ -x "$venv/bin/python" ]; then
        rm -rf "$venv"
        # Debian ships venv's ensurepip apart, in python3-venv.
        "$py" -m venv --system-site-packages "$venv" >/dev/null 2>&1 || {
            rm -rf "$venv"
            apt_install python3-venv
            "$py" -m venv --system-site-packages "$venv"
        }
    fi
    py=$PWD/$venv/bin/python
    local reqs=()
    for spec in "${missing[@]}"; do
        mod=${spec%%=*}
        "$py" -c "import $mod" 2>/dev/null || reqs+=("${spec#*=}")
    done
    [ ${#reqs[@]} -eq 0 ] && return 0
    echo "installing ${reqs[*]} (pip, in $venv) ..." >&2
    local log
    log=$(mktemp)
    if ! "$py" -m pip install --quiet --disable-pip-version-check "${reqs[@]}" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "$(basename "$0"): pip could not install ${reqs[*]}" >&2
        exit 1
    fi
    rm -f "$log"
}
