#!/bin/sh
# The Python of the asyncio group's baselines (asyncio's default loop and uvloop, run in
# their own OS processes): a venv of the same Python that pybeam embeds, so that every loop
# runs the same CPython, with the pinned requirements. Remade when either changes.
set -eu
venv=_build/benchenv
req=bench/asyncio/requirements.txt
py=${PYO3_PYTHON:-python3}
stamp="$venv/pybeam-bench-stamp"
want=$( "$py" -c 'import sys; print(sys.version)'; cat "$req" )
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "bench: creating $venv ($(tr '\n' ' ' <"$req"))" >&2
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
printf '%s\n' "$want" >"$stamp"
