#!/bin/sh
# Render the diagrams of doc/diagram/ to PNG with Graphviz's dot
# (Debian: apt-get install graphviz). Run from anywhere; commit both the
# .dot source and the .png.
set -eu
cd "$(dirname "$0")"
for src in *.dot; do
    dot -Tpng -Gdpi=96 -o "${src%.dot}.png" "$src"
    echo "rendered ${src%.dot}.png"
done
