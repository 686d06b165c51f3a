#!/usr/bin/env bash
# CI, as root: build the packages (scripts/package.sh), install the .deb with
# dpkg -i and check what a user gets from it: `graceexec --version`, the man
# page through `man`, the bash completion loaded by bash-completion from its
# standard directory, the zsh and fish files, the example units. Then remove
# the package, so the machine is left as it was (apart from man-db and
# bash-completion, installed when missing). The tar.gz is checked as its
# INSTALL note says a user installs it, in a temporary ~/.local.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh

fail() {
    echo "package-test: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
# Removing a graceexec that was there before would not leave the machine
# as it was.
if dpkg-query -W -f='${db:Status-Status}' graceexec 2>/dev/null | grep -qv '^not-installed$'; then
    fail "the graceexec package is already installed; remove it first (dpkg -r graceexec)"
fi
[ ! -e /usr/bin/graceexec ] || fail "/usr/bin/graceexec exists and belongs to no package; remove it first"

missing=()
command -v man >/dev/null || missing+=(man-db)
[ -f /usr/share/bash-completion/bash_completion ] || missing+=(bash-completion)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# The page itself: groff's warnings (-ww) are the man page's mistakes.
warnings=$(groff -man -Tutf8 -ww doc/graceexec.1 2>&1 >/dev/null)
[ -z "$warnings" ] || fail "groff warns about doc/graceexec.1: $warnings"

mapfile -t built < <(scripts/package.sh)
deb="" tgz=""
for f in "${built[@]}"; do
    case $f in
    *.deb) deb=$f ;;
    *.tar.gz) tgz=$f ;;
    esac
done
if [ -z "$deb" ] || [ -z "$tgz" ]; then
    fail "package.sh did not print a .deb and a .tar.gz: ${built[*]}"
fi
version=$(dpkg-deb -f "$deb" Version)

tmp=$(mktemp -d)
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    dpkg --purge graceexec >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# Loads the completion for graceexec the way bash-completion does on the
# first Tab, and completes `graceexec rel`: prints the `complete -p` line,
# then the candidates. Run with the PATH under test.
# shellcheck disable=SC2016 # expanded by that bash
complete_rel='
source /usr/share/bash-completion/bash_completion
_completion_loader graceexec
spec=$(complete -p graceexec) || exit 1
echo "$spec"
fn=${spec#*-F }
fn=${fn%% *}
COMP_WORDS=(graceexec rel) COMP_CWORD=1 COMP_LINE="graceexec rel" COMP_POINT=13
"$fn" graceexec rel graceexec
printf "%s\n" "${COMPREPLY[@]}"
'

# ---- the .deb
dpkg -i "$deb" >/dev/null
hash -r
[ "$(command -v graceexec)" = /usr/bin/graceexec ] || fail "graceexec is not /usr/bin/graceexec"
got=$(graceexec --version)
[ "$got" = "graceexec $version" ] || fail "graceexec --version says '$got', not 'graceexec $version'"

page=$(man -w graceexec) || fail "man -w graceexec finds no page"
[ "$page" = /usr/share/man/man1/graceexec.1.gz ] || fail "man -w graceexec: $page"
text=$(MANWIDTH=80 man graceexec 2>&1) || fail "man graceexec: $text"
for heading in SYNOPSIS COMMANDS EXAMPLES SIGNALS "EXIT STATUS" ENVIRONMENT FILES "SEE ALSO"; do
    grep -q "^$heading" <<<"$text" || fail "man graceexec has no $heading section"
done
whatis=$(lexgrog "$page") || fail "lexgrog cannot read the page's NAME: $whatis"

comp=/usr/share/bash-completion/completions/graceexec
cmp -s "$comp" <(graceexec completions bash) || fail "$comp is not what graceexec completions bash prints"
out=$(env -i PATH=/usr/bin:/bin HOME="$tmp" bash --norc --noprofile -c "$complete_rel" 2>&1) ||
    fail "bash-completion does not load $comp: $out"
grep -qx 'reload' <<<"$out" || fail "'graceexec rel<Tab>' does not offer reload: $out"

for f in /usr/share/zsh/vendor-completions/_graceexec \
    /usr/share/fish/vendor_completions.d/graceexec.fish \
    /usr/share/doc/graceexec/copyright \
    /usr/share/doc/graceexec/README.md \
    /usr/share/doc/graceexec/examples/systemd/api.service \
    /usr/share/doc/graceexec/examples/systemd/socket/api.socket; do
    dpkg -S "$f" >/dev/null 2>&1 || fail "the package does not install $f"
done
if command -v zsh >/dev/null; then
    zsh -fc 'autoload -U compinit && compinit -u && (( $+_comps[graceexec] ))' ||
        fail "zsh's compinit does not find _graceexec"
fi
if command -v fish >/dev/null; then
    fish -c 'complete -C "graceexec rel"' | grep -q '^reload' || fail "fish does not complete graceexec rel"
fi
# The example units as systemd reads them (their ExecStart= binary now
# exists); only where systemd-analyze is installed.
if command -v systemd-analyze >/dev/null; then
    grep -q '^ExecStart=/usr/bin/graceexec ' /usr/share/doc/graceexec/examples/systemd/api.service ||
        fail "the packaged api.service does not run /usr/bin/graceexec"
    for unit in /usr/share/doc/graceexec/examples/systemd/api.service \
        /usr/share/doc/graceexec/examples/systemd/socket/api.socket \
        /usr/share/doc/graceexec/examples/systemd/socket/api.service; do
        out=$(cd "$(dirname "$unit")" && systemd-analyze verify --man=no "./$(basename "$unit")" 2>&1) ||
            fail "systemd-analyze verify $unit: $out"
    done
else
    echo "package-test: no systemd-analyze; the example units were not verified" >&2
fi

dpkg --purge graceexec >/dev/null
hash -r
for f in /usr/bin/graceexec "$comp" /usr/share/doc/graceexec; do
    [ ! -e "$f" ] || fail "dpkg --purge graceexec left $f behind"
done

# ---- the tar.gz, installed as its INSTALL note says for one user: bin/
# and share/ copied into ~/.local (bash-completion searches
# ~/.local/share, man derives ~/.local/share/man from ~/.local/bin on PATH).
tar -C "$tmp" -xzf "$tgz"
unpacked=$tmp/$(basename "$tgz" .tar.gz)
for f in INSTALL share/zsh/site-functions/_graceexec share/fish/vendor_completions.d/graceexec.fish \
    share/doc/graceexec/LICENSE-MIT share/doc/graceexec/LICENSE-APACHE; do
    [ -f "$unpacked/$f" ] || fail "the archive has no $f"
done
# The INSTALL note names the graceexec the archive's units run.
unit_bin=$(sed -n 's|^ExecStart=\([^ ]*\) .*|\1|p' "$unpacked/share/doc/graceexec/examples/systemd/api.service")
grep -q "call $unit_bin," "$unpacked/INSTALL" ||
    fail "INSTALL does not say that the example units call $unit_bin"
home=$tmp/home
mkdir -p "$home/.local"
cp -R "$unpacked/bin" "$unpacked/share" "$home/.local/"
user_path=$home/.local/bin:/usr/bin:/bin
got=$(env -i PATH="$user_path" HOME="$home" graceexec --version)
[ "$got" = "graceexec $version" ] || fail "the archive's graceexec --version says '$got'"
page=$(env -i PATH="$user_path" HOME="$home" man -w graceexec) ||
    fail "man does not find the archive's page in ~/.local"
[ "$page" = "$home/.local/share/man/man1/graceexec.1.gz" ] || fail "man -w graceexec with ~/.local/bin on PATH: $page"
out=$(env -i PATH="$user_path" HOME="$home" bash --norc --noprofile -c "$complete_rel" 2>&1) ||
    fail "bash-completion does not load the archive's completion from ~/.local: $out"
grep -qx 'reload' <<<"$out" || fail "the archive's completion does not offer reload: $out"

echo "package-test: $deb and $tgz install and work; the package is removed again"
