#!/bin/sh
# Makes sure the tools pybeam builds with are present. Rust and Python 3 must already be
# installed; Erlang/OTP, rebar3 and Elixir are installed with apt-get when missing.
set -eu

missing=""
command -v cargo >/dev/null 2>&1 || missing="$missing cargo(Rust)"
if [ -n "${PYO3_PYTHON:-}" ]; then
    command -v "$PYO3_PYTHON" >/dev/null 2>&1 || missing="$missing $PYO3_PYTHON(PYO3_PYTHON)"
else
    command -v python3 >/dev/null 2>&1 || missing="$missing python3"
fi
if [ -n "$missing" ]; then
    echo "pybeam: missing:$missing. Install Rust (rustup) and Python 3.10+ first." >&2
    exit 1
fi

py=${PYO3_PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "pybeam: $py is $("$py" -V 2>&1); Python 3.10 or newer is required." >&2
    exit 1
fi
if ! "$py" -c 'import sysconfig, sys; sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") else 1)'; then
    echo "pybeam: $py was built without a shared libpython, which embedding needs." >&2
    exit 1
fi

packages=""
command -v erl >/dev/null 2>&1 || packages="$packages erlang-nox"
[ -f "$(dirname "$(dirname "$(readlink -f "$(command -v erl 2>/dev/null || echo /nonexistent)")")")/usr/include/erl_nif.h" ] \
    || [ -f /usr/lib/erlang/usr/include/erl_nif.h ] || packages="$packages erlang-dev"
command -v rebar3 >/dev/null 2>&1 || packages="$packages rebar3"
command -v elixir >/dev/null 2>&1 || packages="$packages elixir"

if [ -n "$packages" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "pybeam: missing:$packages and apt-get is not available to install them." >&2
        exit 1
    fi
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "pybeam: installing$packages with apt-get" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $packages >/dev/null
fi

otp=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')
if [ "$otp" -lt 25 ]; then
    echo "pybeam: Erlang/OTP $otp found; OTP 25 or newer is required." >&2
    exit 1
fi
