"""vq06 (speech_tokenizer_v1.onnx, 25 Hz, 4096 codes) and the dual-codebook id layouts Step-Audio uses.

Ids, from Step-Audio-EditX tokenizer.py / tts.py:
  vq02 code c (0..1023)  -> mixed id c          -> string `<audio_c>`        -> LM id 65536 + c
  vq06 code c (0..4095)  -> mixed id 1024 + c   -> string `<audio_{1024+c}>` -> LM id 65536 + 1024 + c
Mixed sequences are groups of 2 vq02 + 3 vq06 (16.67 Hz : 25 Hz); a trailing partial group is dropped.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from editx.audio.features import whisper_log_mel
from editx.errors import ModelFilesError, ValidationError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
VQ02_CODES = 1024
VQ06_CODES = 4096
VQ06_OFFSET = VQ02_CODES  # vq06 codes follow the 1024 vq02 codes in the mixed/string space
MIXED_VOCAB = VQ02_CODES + VQ06_CODES  # 5120
AUDIO_TOKEN_OFFSET = 65536  # first audio id in the Step1 vocabulary
GROUP_VQ02, GROUP_VQ06 = 2, 3
VQ06_RATE = 25  # codes per second
N_MELS = 128  # whisper.log_mel_spectrogram(n_mels=128)
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # upstream splits audio into 30 s windows ...
MIN_WINDOW_SAMPLES = 480  # ... and skips a last window shorter than 30 ms
COUNT_TOLERANCE = 2  # upstream asserts |codes - round(seconds, 2) * 25| <= 2 per window
_AUDIO_TOKEN = re.compile(r"<audio_(\d+)>")


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def onnx_inputs(session) -> list[tuple[str, str, list]]:
    """An onnxruntime session's graph inputs as (name, element type, shape), e.g. ("feats", "float", [1, 128, "T"])."""
    return [(i.name, i.type.removeprefix("tensor(").removesuffix(")"), list(i.shape)) for i in session.get_inputs()]


def check_inputs(inputs: list[tuple[str, str, list]], source: str = "speech_tokenizer_v1.onnx") -> None:
    """The inputs upstream feeds, by position: [0] mel (1, 128, T) float, [1] its length (1,) int32.

    Rule: exactly these two (an extra input would be left unfed); the first output is the codes."""
    if len(inputs) != 2:
        raise ModelFilesError(f"{source} takes {len(inputs)} input(s) {[i[0] for i in inputs]}; the S3 tokenizer "
                              "takes two (mel features, their length): re-download Step-Audio-Tokenizer")
    (name0, type0, shape0), (name1, type1, shape1) = inputs
    if type0 != "float" or len(shape0) != 3 or (isinstance(shape0[1], int) and shape0[1] != N_MELS):
        raise ModelFilesError(f"{source}: input 0 ({name0}) is {type0} {shape0}; expected float (1, {N_MELS}, T)")
    if type1 != "int32" or len(shape1) != 1:
        raise ModelFilesError(f"{source}: input 1 ({name1}) is {type1} {shape1}; expected int32 (1,)")


class SpeechTokenizerV1:
    """onnxruntime session over speech_tokenizer_v1.onnx: 16 kHz audio -> vq06 codes."""

    def __init__(self, session) -> None:
        self.session = session
        inputs = onnx_inputs(session)
        check_inputs(inputs)
        # Upstream addresses the inputs by position: [0] mel (1, 128, T) float32, [1] length (1,) int32.
        self.feats_name, self.length_name = inputs[0][0], inputs[1][0]

    @classmethod
    def load(cls, path: Path, *, threads: int = 1, providers: list[str] | tuple[str, ...] | None = None
             ) -> SpeechTokenizerV1:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelFilesError(f"missing {path} (the vq06 speech tokenizer); re-download Step-Audio-Tokenizer")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), sess_options=opts,
                                           providers=list(providers or default_providers()))
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            raise ModelFilesError(f"cannot load {path} ({type(exc).__name__}: {first}); "
                                  "the file is damaged or incomplete, re-download it") from exc
        log.debug("speech tokenizer on %s", session.get_providers())
        return cls(session)

    def codes(self, samples16k: np.ndarray) -> np.ndarray:
        """vq06 codes (T,) int64, 25 per second, windows of at most 30 s as upstream."""
        wav = np.asarray(samples16k, dtype=np.float32)
        out = []
        for start in range(0, len(wav), WINDOW_SAMPLES):
            window = wav[start:start + WINDOW_SAMPLES]
            if len(window) < MIN_WINDOW_SAMPLES:
                continue
            feats = whisper_log_mel(window, n_mels=N_MELS).numpy()[None]  # (1, 128, frames)
            length = np.array([feats.shape[2]], dtype=np.int32)
            codes = self.session.run(None, {self.feats_name: feats, self.length_name: length})[0]
            codes = np.asarray(codes).reshape(-1).astype(np.int64)
            expected = round(len(window) / SAMPLE_RATE, 2) * VQ06_RATE
            if abs(len(codes) - expected) > COUNT_TOLERANCE or (codes.size and not
                                                               (0 <= codes.min() and codes.max() < VQ06_CODES)):
                raise ModelFilesError(
                    f"speech_tokenizer_v1.onnx gave {len(codes)} codes in [{codes.min(initial=0)}, "
                    f"{codes.max(initial=0)}] for {len(window) / SAMPLE_RATE:.2f} s (expected about "
                    f"{expected:.0f} codes below {VQ06_CODES}); it is not the CosyVoice S3 tokenizer v1")
            out.append(codes)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def interleave(vq02: np.ndarray, vq06: np.ndarray) -> np.ndarray:
    """Mixed ids (0..5119): [a, b, 1024+x, 1024+y, 1024+z] per group; leftovers are dropped like upstream."""
    vq02 = _codes(vq02, VQ02_CODES, "vq02")
    vq06 = _codes(vq06, VQ06_CODES, "vq06")
    groups = min(len(vq02) // GROUP_VQ02, len(vq06) // GROUP_VQ06)
    a = vq02[: groups * GROUP_VQ02].reshape(groups, GROUP_VQ02)
    b = vq06[: groups * GROUP_VQ06].reshape(groups, GROUP_VQ06) + VQ06_OFFSET
    return np.concatenate((a, b), axis=1).reshape(-1)


def split_mixed(mixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `interleave` for whole groups: (vq02 codes, vq06 codes); a partial tail is ignored."""
    mixed = _codes(mixed, MIXED_VOCAB, "mixed")
    group = GROUP_VQ02 + GROUP_VQ06
    rows = mixed[: len(mixed) // group * group].reshape(-1, group)
    return rows[:, :GROUP_VQ02].reshape(-1), rows[:, GROUP_VQ02:].reshape(-1) - VQ06_OFFSET


def mixed_to_string(mixed: np.ndarray) -> str:
    """`<audio_N>` per id, concatenated: the text form that goes into LM prompts."""
    return "".join(f"<audio_{int(x)}>" for x in _codes(mixed, MIXED_VOCAB, "mixed"))


def string_to_mixed(text: str) -> np.ndarray:
    """Parse `<audio_N><audio_M>...` back to mixed ids; anything else in the string is an error."""
    ids = _AUDIO_TOKEN.findall(text)
    if _AUDIO_TOKEN.sub("", text).strip():
        raise ValidationError("audio token strings must consist only of <audio_N> tokens")
    return _codes(np.array([int(i) for i in ids], dtype=np.int64), MIXED_VOCAB, "mixed")


def mixed_to_lm_ids(mixed: np.ndarray) -> np.ndarray:
    """Step1 vocabulary ids: mixed + 65536."""
    return _codes(mixed, MIXED_VOCAB, "mixed") + AUDIO_TOKEN_OFFSET


def lm_ids_to_mixed(ids, *, drop_invalid: bool = False) -> np.ndarray:
    """LM output ids -> mixed ids (ids - 65536). Non-audio ids raise, or are dropped with drop_invalid."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1) - AUDIO_TOKEN_OFFSET
    bad = (arr < 0) | (arr >= MIXED_VOCAB)
    if bad.any():
        if not drop_invalid:
            raise ValidationError(f"{int(bad.sum())} of {arr.size} ids are not audio tokens "
                                  f"({AUDIO_TOKEN_OFFSET}..{AUDIO_TOKEN_OFFSET + MIXED_VOCAB - 1}), "
                                  f"e.g. {int(arr[bad][0]) + AUDIO_TOKEN_OFFSET}")
        log.warning("dropping %d non-audio ids from the LM output", int(bad.sum()))
        arr = arr[~bad]
    return arr


def _codes(x, limit: int, what: str) -> np.ndarray:
    arr = np.asarray(x).reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValidationError(f"{what} ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= limit):
        raise ValidationError(f"{what} ids must be in 0..{limit - 1}, got {arr.min()}..{arr.max()}")
    return arr
