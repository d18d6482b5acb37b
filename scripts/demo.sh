#!/usr/bin/env bash
# Set up, then run the main job: a voice clone written to out.wav.
# With EDITX_MODEL_DIR pointing at the released weights this runs the real Step-Audio-EditX;
# without it, it generates random-weight fixtures (noise, but the whole pipeline runs end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${EDITX_MODEL_DIR:-}" ]; then
    EDITX_MODEL_DIR="$PWD/models/fixture-tiny"
    [ -d "$EDITX_MODEL_DIR/Step-Audio-Tokenizer" ] || .venv/bin/editx fixtures make "$EDITX_MODEL_DIR" --preset tiny
fi
exec .venv/bin/editx fixtures make "$EDITX_MODEL_DIR" --preset tiny
