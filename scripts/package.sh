#!/usr/bin/env bash
# Build graceexec for release and package it for machines without Rust:
#
#   target/package/graceexec_VERSION_ARCH.deb             dpkg -i
#   target/package/graceexec-VERSION-TRIPLE.tar.gz        a prefix (bin/, share/)
#
# Both hold the binary, the man page, the bash, zsh and fish completions in
# the directories each shell searches, the README, the licences and the
# example systemd units. No cargo-deb: dpkg-deb packs a staged tree, and
# dpkg-shlibdeps reads the binary's Depends. Runs lintian when it is
# installed. Idempotent; prints one line per artifact at the end.
#
#   DEB_MAINTAINER="Name <address>"   the control file's Maintainer
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

version=$(awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version *=/ { print $2; exit }' Cargo.toml)
triple=$(rustc -vV | sed -n 's/^host: //p')
# No project address exists yet: .invalid says so (RFC 2606) until one does.
maintainer=${DEB_MAINTAINER:-graceexec contributors <graceexec@maintainers.invalid>}
# Every file gets the last commit's time, so that two builds of one commit
# are the same bytes.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || stat -c %Y Cargo.toml)}
out=target/package
work=$out/work

# The committed page is kept current by a test; a stale one would carry
# the wrong version.
if ! grep -q "\"graceexec $version\"" doc/graceexec.1; then
    echo "package: doc/graceexec.1 is not the page of $version; run scripts/generate.sh" >&2
    exit 1
fi

cargo build --release --locked --quiet
rm -rf "$work"
mkdir -p "$work"
bin=$work/graceexec
# Where cargo put it: a CARGO_TARGET_DIR would leave target/release stale.
cp "${CARGO_TARGET_DIR:-target}/release/graceexec" "$bin"
# What dh_strip does: debug symbols and notes out (Debian policy 10.1).
strip --remove-section=.comment --remove-section=.note "$bin"

# stage ROOT PREFIX ZSH_DIR: the files both packages have, under ROOT/PREFIX.
stage() {
    local root=$1 prefix=$2 zsh=$3
    local share=$root$prefix/share doc=$root$prefix/share/doc/graceexec
    install -D -m 755 "$bin" "$root$prefix/bin/graceexec"
    install -d "$share/man/man1"
    gzip -9n <doc/graceexec.1 >"$share/man/man1/graceexec.1.gz"
    install -d "$share/bash-completion/completions" "$share/$zsh" "$share/fish/vendor_completions.d"
    "$bin" completions bash >"$share/bash-completion/completions/graceexec"
    "$bin" completions zsh >"$share/$zsh/_graceexec"
    "$bin" completions fish >"$share/fish/vendor_completions.d/graceexec.fish"
    # The README with what its links point at, at the same relative paths.
    for f in README.md CONTRIBUTING.md doc/benchmarks.md doc/protocol.md doc/bench/*.md \
        doc/bench/*.png doc/diagram/how-it-works.png; do
        install -D -m 644 "$f" "$doc/$f"
    done
    # The units scripts/systemd-test.sh runs, with graceexec where this
    # package puts it (the tar.gz keeps /usr/local/bin, where it says to
    # install the binary system-wide).
    (cd examples && find systemd -type f) | while read -r f; do
        install -D -m 644 "examples/$f" "$doc/examples/$f"
        sed -i "s|/usr/local/bin/graceexec|${prefix:-/usr/local}/bin/graceexec|g" "$doc/examples/$f"
    done
}

# ---- the .deb: debian/graceexec is the package's root, as dpkg-shlibdeps
# expects it.
deb=""
if command -v dpkg-deb >/dev/null; then
    arch=$(dpkg --print-architecture)
    root=$work/debian/graceexec
    stage "$root" /usr zsh/vendor-completions
    doc=$root/usr/share/doc/graceexec
    # Debian keeps licences in the copyright file (policy 12.5), and lintian
    # flags any other licence file; Apache-2.0 is in common-licenses.
    {
        cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: graceexec

Files: *
Copyright: 2026 graceexec contributors
License: Expat or Apache-2.0

License: Expat
EOF
        sed -n '/^Permission/,$p' LICENSE-MIT | sed 's/^$/./; s/^/ /'
        cat <<EOF

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0, is in
 /usr/share/common-licenses/Apache-2.0.
EOF
    } >"$doc/copyright"
    # A native version (no Debian revision) asks for changelog.gz.
    {
        printf 'graceexec (%s) unstable; urgency=medium\n\n' "$version"
        printf '  * Release %s, built from the upstream sources.\n\n' "$version"
        printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
    } | gzip -9n >"$doc/changelog.gz"

    # dpkg-shlibdeps finds the package's root by its DEBIAN directory.
    install -d "$root/DEBIAN"
    printf 'Source: graceexec\n\nPackage: graceexec\nArchitecture: any\n' >"$work/debian/control"
    depends=$(cd "$work" && dpkg-shlibdeps -O -edebian/graceexec/usr/bin/graceexec | sed -n 's/^shlibs:Depends=//p')

    (cd "$root" && find usr -type f | LC_ALL=C sort | xargs md5sum) >"$root/DEBIAN/md5sums"
    cat >"$root/DEBIAN/control" <<EOF
Package: graceexec
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $depends
Section: admin
Priority: optional
Description: zero-downtime reloads of servers on inherited sockets
 graceexec binds listening sockets once and runs a server with them in the
 systemd socket-activation convention (LISTEN_FDS, LISTEN_PID,
 LISTEN_FDNAMES, NOTIFY_SOCKET). On a reload (a signal, or the
 "graceexec reload" command, whose exit status says whether it worked) it
 starts a replacement, waits until it is ready, and only then stops the old
 one, so that no connection is refused or dropped.
EOF
    chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    deb=$out/graceexec_${version}_$arch.deb
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
    if command -v lintian >/dev/null; then
        # Errors fail the build; warnings and notes are shown.
        lintian --fail-on error "$deb" >&2
    else
        echo "package: lintian is not installed; the .deb was not checked with it" >&2
    fi
else
    echo "package: no dpkg-deb here; only the tar.gz is built" >&2
fi

# ---- the tar.gz: a prefix, for /usr/local or ~/.local. zsh searches
# share/zsh/site-functions there (vendor-completions is Debian's, for /usr).
name=graceexec-$version-$triple
tree=$work/$name
stage "$tree" "" zsh/site-functions
install -m 644 LICENSE-MIT LICENSE-APACHE "$tree/share/doc/graceexec/"
cat >"$tree/INSTALL" <<EOF
graceexec $version for $triple

Copy bin/ and share/ into a prefix, as root for /usr/local:

    sudo cp -R bin share /usr/local/

or as yourself, for ~/.local (with ~/.local/bin on PATH):

    mkdir -p ~/.local && cp -R bin share ~/.local/

Then:

    graceexec --version
    man graceexec

The man page is share/man/man1/graceexec.1.gz: man finds it through PATH
(PREFIX/bin on PATH means PREFIX/share/man). The completions:
share/bash-completion/completions/graceexec, which bash-completion loads
on first use from /usr/local/share and ~/.local/share (elsewhere, add
PREFIX/share to XDG_DATA_DIRS); share/zsh/site-functions/_graceexec, in
zsh's fpath for /usr/local (elsewhere, add the directory to fpath before
compinit); share/fish/vendor_completions.d/graceexec.fish, which fish
reads from /usr/local/share and ~/.local/share. Example systemd units are
in share/doc/graceexec/examples/; they call /usr/local/bin/graceexec, so
adjust the path for another prefix.

To uninstall, remove what this archive lists (tar tzf) from the prefix.
EOF
find "$tree" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
tgz=$out/$name.tar.gz
tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner --mode=go-w \
    -cf - "$name" | gzip -9n >"$tgz"

[ -n "$deb" ] && echo "$deb"
echo "$tgz"
