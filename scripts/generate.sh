#!/bin/sh
# Regenerate the files derived from the clap definitions: the shell
# completions under completions/ and the man page doc/graceexec.1 (from
# doc/graceexec.1.in and the parser, by src/cli/tests/man.rs).
# Tests fail when the committed copies are out of date.
set -eu
cd "$(dirname "$0")/.."
cargo build --quiet
bin=${CARGO_TARGET_DIR:-target}/debug/graceexec
"$bin" completions bash > completions/graceexec.bash
"$bin" completions zsh > completions/_graceexec
"$bin" completions fish > completions/graceexec.fish
GRACEEXEC_REGENERATE=1 cargo test --quiet --bin graceexec man_page_is_up_to_date >/dev/null
echo "updated completions/ and doc/graceexec.1"
