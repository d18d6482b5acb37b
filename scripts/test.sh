#!/usr/bin/env bash
# Set up everything (venv, extras, redis-server, chromium) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
EDITX_SYSTEM_DEPS=1 bash scripts/setup.sh
export HOME="${HOME:-/tmp}"
exec .venv/bin/python -m pytest -q "$@"
