#!/bin/sh
# Builds the NIF against $PYO3_PYTHON (default: python3 on PATH) and installs it as
# priv/py_nif.so. Called by rebar3's compile pre-hook and by the Makefile.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
: "${PYO3_PYTHON:=$(command -v python3 || true)}"
if [ -z "$PYO3_PYTHON" ]; then
    echo "pybeam: no Python found; set PYO3_PYTHON or put python3 on PATH" >&2
    exit 1
fi
export PYO3_PYTHON
cd "$here"
cargo build --release --locked -p pybeam_nif
mkdir -p ../priv
# Replace by rename: overwriting a mapped .so in place can crash a VM that loaded it.
cp target/release/libpybeam_nif.so ../priv/py_nif.so.tmp
mv -f ../priv/py_nif.so.tmp ../priv/py_nif.so
