#!/bin/sh
# Installs the peers that `python -m bench --peers` measures beside the gateway, each in its own
# environment under bench/.peers/ (git-ignored), so none of them touches the project's venv.
# Idempotent: what is already there at the pinned version is left alone.
#
# Pins (the versions the comparison was made with; change them here and nowhere else):
#   litellm[proxy]      1.108.7   the LiteLLM proxy (PyPI), venv bench/.peers/litellm. Not the newest
#                                 release: from 1.108.8 on, the [proxy] extra pins litellm-proxy,
#                                 litellm-proxy-extras or litellm-enterprise releases that the package
#                                 index this was set up with does not serve.
#   @portkey-ai/gateway 1.15.2    Portkey's open-source gateway (npm), bench/.peers/portkey; node >= 18
#   fastapi             0.163.2   the minimal FastAPI + httpx proxy (bench/fastapi_proxy.py), venv
#   uvicorn[standard]   0.54.0    bench/.peers/fastapi; [standard] (uvloop, httptools) as FastAPI's
#   httpx               0.28.1    docs install it, so the proxy runs as it would in production
# Usage: bench/peers_setup.sh
set -eu
LITELLM_VERSION=1.108.7
PORTKEY_VERSION=1.15.2
FASTAPI_VERSION=0.163.2
UVICORN_VERSION=0.54.0
HTTPX_VERSION=0.28.1
NODE_MIN_MAJOR=18

PEERS="$(cd "$(dirname "$0")" && pwd)/.peers"
PYTHON="${PYTHON:-python3}"
mkdir -p "$PEERS"

# $1: venv directory, $2: the packages to show afterwards (an ERE), the rest: pinned requirements.
# pip leaves requirements that are already met alone (without asking the index).
venv_install() {
    dir="$1"; shown="$2"; shift 2
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$@"
    echo "$(basename "$dir"): $("$dir/bin/pip" freeze 2>/dev/null | grep -i -E "^($shown)==" | tr '\n' ' ')"
}

venv_install "$PEERS/litellm" "litellm" "litellm[proxy]==$LITELLM_VERSION"
venv_install "$PEERS/fastapi" "fastapi|uvicorn|httpx|uvloop|httptools" \
    "fastapi==$FASTAPI_VERSION" "uvicorn[standard]==$UVICORN_VERSION" "httpx==$HTTPX_VERSION"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "portkey: skipped: node and npm are needed (apt-get install nodejs npm)" >&2
    exit 0
fi
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt "$NODE_MIN_MAJOR" ]; then
    echo "portkey: skipped: node $(node --version) is older than $NODE_MIN_MAJOR" >&2
    exit 0
fi
PORTKEY_PACKAGE="$PEERS/portkey/node_modules/@portkey-ai/gateway/package.json"
if ! { [ -f "$PORTKEY_PACKAGE" ] &&
       node -e "process.exit(require('$PORTKEY_PACKAGE').version === '$PORTKEY_VERSION' ? 0 : 1)"; }; then
    npm install --silent --no-audit --no-fund --prefix "$PEERS/portkey" "@portkey-ai/gateway@$PORTKEY_VERSION"
fi
echo "portkey: @portkey-ai/gateway@$PORTKEY_VERSION, node $(node --version)"
