#!/bin/sh
# Runs every test runner, keeps their logs, and ends with one line `N passed, N failed`.
# A runner that fails without reporting counts (it crashed or did not build) counts as
# one failure, so nothing is lost silently.
set -u
logs=${1:-.test-logs}
with_conformance=${2:-}
rm -rf "$logs"
mkdir -p "$logs"
status=0

run() {
    name=$1
    shift
    echo "==> $name: $*"
    "$@" >"$logs/$name.log" 2>&1
    code=$?
    sed 's/\x1b\[[0-9;]*m//g' "$logs/$name.log" | tail -n 25
    echo "$code" >"$logs/$name.exit"
}

run cargo sh -c 'cd native && cargo test -p pybeam_core --release'
run eunit rebar3 eunit
run ct rebar3 ct
run exunit elixir -pa _build/default/lib/pybeam/ebin test/elixir/run.exs
if [ "$with_conformance" = "--conformance" ]; then
    run conformance sh scripts/conformance.sh "$logs/conformance"
fi

python3 scripts/count_results.py "$logs"
