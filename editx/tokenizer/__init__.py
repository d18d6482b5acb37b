"""Step-Audio dual-codebook tokenizer: audio -> vq02 (Paraformer + k-means) and vq06 (S3 ONNX) codes.

`StepAudioTokenizer.load(dir)` reads the official Step-Audio-Tokenizer folder; `wav2token` does what
upstream `StepAudioTokenizer.wav2token` does (resample to 16 kHz, peak 0.999, trim silence, both
codebooks, 2:3 interleave) and returns the codes in every form the pipeline needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editx.audio.features import tokenizer_input
from editx.errors import AudioError, ModelFilesError
from editx.tokenizer import speech
from editx.tokenizer.paraformer import ParaformerVq02
from editx.tokenizer.speech import SpeechTokenizerV1

__all__ = ["FUNASR_SUBDIR", "TOKENIZER_DIR", "DualTokens", "StepAudioTokenizer"]

log = logging.getLogger(__name__)

TOKENIZER_DIR = "Step-Audio-Tokenizer"
# Step-Audio-EditX tokenizer.py: the FunASR model folder inside the tokenizer download.
FUNASR_SUBDIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
KMEANS_FILE = "linguistic_tokenizer.npy"
SPEECH_TOKENIZER_FILE = "speech_tokenizer_v1.onnx"


@dataclass(frozen=True, eq=False)
class DualTokens:
    """Codes of one clip: vq02 (0..1023, 16.67 Hz), vq06 (0..4095, 25 Hz), mixed (0..5119, 2:3 groups).

    The arrays are int64 and read-only (instances are shared through caches).
    """

    vq02: np.ndarray
    vq06: np.ndarray
    mixed: np.ndarray

    @classmethod
    def from_codes(cls, vq02: np.ndarray, vq06: np.ndarray) -> DualTokens:
        arrays = [np.array(vq02, dtype=np.int64).reshape(-1), np.array(vq06, dtype=np.int64).reshape(-1),
                  speech.interleave(vq02, vq06)]
        for arr in arrays:
            arr.setflags(write=False)
        return cls(*arrays)

    @property
    def token_str(self) -> str:
        """`<audio_N>...` as it appears in LM prompts (upstream merge_vq0206_to_token_str)."""
        return speech.mixed_to_string(self.mixed)

    @property
    def lm_ids(self) -> np.ndarray:
        """Step1 vocabulary ids (mixed + 65536), the list upstream wav2token returns first."""
        return speech.mixed_to_lm_ids(self.mixed)


class StepAudioTokenizer:
    """Both speech tokenizers; stateless per call, so one instance serves concurrent requests."""

    def __init__(self, vq02: ParaformerVq02, vq06: SpeechTokenizerV1) -> None:
        self.vq02_model = vq02
        self.vq06_model = vq06

    @classmethod
    def load(cls, tokenizer_dir: str | Path, *, device: str | torch.device = "cpu", onnx_threads: int = 1,
             onnx_providers: list[str] | tuple[str, ...] | None = None) -> StepAudioTokenizer:
        """Load from Step-Audio-Tokenizer/ (or from the folder that holds it)."""
        root = Path(tokenizer_dir)
        if not (root / FUNASR_SUBDIR).is_dir() and (root / TOKENIZER_DIR / FUNASR_SUBDIR).is_dir():
            root = root / TOKENIZER_DIR
        if not root.is_dir():
            raise ModelFilesError(f"tokenizer folder {root} does not exist; download stepfun-ai/{TOKENIZER_DIR}")
        if not (root / FUNASR_SUBDIR).is_dir():
            raise ModelFilesError(f"{root} has no {FUNASR_SUBDIR}/ folder; pass the {TOKENIZER_DIR} folder "
                                  "of the official download")
        vq02 = ParaformerVq02.load(root / FUNASR_SUBDIR, root / KMEANS_FILE, device=device)
        vq06 = SpeechTokenizerV1.load(root / SPEECH_TOKENIZER_FILE, threads=onnx_threads,
                                      providers=onnx_providers)
        log.info("speech tokenizer loaded from %s (%d-block Paraformer on %s)", root,
                 vq02.cfg.num_blocks, vq02.device)
        return cls(vq02, vq06)

    def preprocess(self, samples: np.ndarray, sample_rate: int, *, trim: bool = True,
                   normalize: bool = True) -> np.ndarray:
        """Upstream preprocess_wav: 16 kHz mono float32, peak 0.999, leading/trailing silence trimmed."""
        arr = np.asarray(samples)
        if arr.ndim != 1 or arr.size == 0:
            raise AudioError(f"the tokenizer needs non-empty mono audio of shape (N,), got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise AudioError("the audio contains NaN or infinite samples")
        return tokenizer_input(arr.astype(np.float32, copy=False), int(sample_rate), normalize=normalize,
                               trim=trim)

    def wav2token(self, samples: np.ndarray, sample_rate: int, *, trim: bool = True,
                  normalize: bool = True) -> DualTokens:
        """Tokenize a clip as upstream wav2token (trim and peak normalisation on by default)."""
        wav = self.preprocess(samples, sample_rate, trim=trim, normalize=normalize)
        return DualTokens.from_codes(self.vq02(wav), self.vq06(wav))

    def vq02(self, samples16k: np.ndarray) -> np.ndarray:
        """vq02 codes of already preprocessed 16 kHz audio."""
        return self.vq02_model.codes(samples16k)

    def vq06(self, samples16k: np.ndarray) -> np.ndarray:
        """vq06 codes of already preprocessed 16 kHz audio."""
        return self.vq06_model.codes(samples16k)
