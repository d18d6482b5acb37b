#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a venv with the CPU torch wheel and editx with its extras.
# EDITX_EXTRAS picks the extras (default: everything the demo and the tests use).
# EDITX_SYSTEM_DEPS=1 also installs the Debian services the tests start (redis-server, chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${EDITX_VENV:-.venv}"
EXTRAS="${EDITX_EXTRAS:-dev,server,redis,metrics,lite,quality,bench,cluster}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
# torch first, pinned to the CPU wheel on local disk, so the package's own torch range is already met
# (any other torch spec pulls a multi-GB CUDA build).
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$PIP" install -q torch==2.13.0
"$PIP" install -q -e ".[${EXTRAS}]"
case ",$EXTRAS," in
    # resemblyzer, silero-vad: weight files only. pyopenjtalk-plus (Japanese readings for the lite backend,
    # dictionary inside the wheel) without its sudachidict_core pin, which the lite front end never uses.
    *,lite,*) "$PIP" install -q --no-deps resemblyzer==0.1.4 silero-vad==6.2.3 \
        pyopenjtalk-plus==0.4.1.post10 sudachipy==0.7.0 ;;
esac
if [ "${EDITX_SYSTEM_DEPS:-0}" = "1" ]; then
    need=()
    command -v redis-server >/dev/null || need+=(redis-server)
    command -v chromium >/dev/null || need+=(chromium)
    if [ "${#need[@]}" -gt 0 ]; then
        if [ "$(id -u)" = "0" ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
        else
            echo "setup: missing ${need[*]} (install them with apt-get; the tests that need them are skipped)" >&2
        fi
    fi
fi
