#!/usr/bin/env bash
# Create .venv at the repository root and install the project (pinned in pyproject.toml) into it.
# Usage: scripts/setup.sh [--test]   (--test also installs the test dependencies)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras}"
# The browser tests (CORS) drive Debian's Chromium and its ChromeDriver.
if [[ -n "$extras" ]] && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
  sudo=""
  [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
