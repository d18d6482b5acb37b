"""The lite backend: offline Kokoro synthesis, voice blending and signal edits from PyPI-shipped models."""
