#!/bin/sh
# Installs what the benchmark needs beyond the project's own dependencies:
#   wrk (Debian package) - the load generator
#   gcc, libc6-dev, libssl-dev (Debian packages) - to build bench/h1load.c, the load generator of
#     `python -m bench --forward-proxy` (requests inside a CONNECT tunnel, which wrk cannot send)
#   py-spy (pip, into the current venv; only with --profile) - the sampling profiler for `python -m bench --profile`
# Usage: bench/setup.sh [--profile]      (root, or sudo, for apt-get)
set -eu
if ! command -v wrk >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1 || [ ! -f /usr/include/openssl/ssl.h ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wrk gcc libc6-dev libssl-dev
fi
wrk --version 2>&1 | head -n 1 || true
if [ "${1:-}" = "--profile" ]; then
    PYTHON="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
    [ -x "$PYTHON" ] || PYTHON=python3
    "$PYTHON" -m pip install -q py-spy
    "$(dirname "$PYTHON")/py-spy" --version 2>/dev/null || py-spy --version
fi
