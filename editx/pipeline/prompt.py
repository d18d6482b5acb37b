"""encode_prompt(): the cacheable unit of Step-Audio-EditX work for one prompt/input clip.

Everything here depends only on the audio (not on any text), so one encoding serves every clone
and edit of that clip: the dual-codebook tokens the LM reads, and the prompt mel and speaker
embedding the flow decoder is conditioned on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from editx.audio.features import peak_limit
from editx.pipeline.types import PromptAudio

# Bump when any feature below changes meaning (it is part of every prompt-cache key).
FEATURE_VERSION = "stepaudio-1"


@dataclass(frozen=True)
class PromptEncoding:
    mixed: np.ndarray  # (N,) int64 interleaved vq02/vq06 ids, 0..5119 (groups of 2 + 3)
    vq02: np.ndarray  # (N02,) int64 0..1023
    vq06: np.ndarray  # (N06,) int64 0..4095
    mel: torch.Tensor  # (T, 80) float32 prompt mel at 50 Hz
    spk: torch.Tensor  # (192,) float32 CAM++ speaker embedding

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"mixed": torch.tensor(self.mixed), "vq02": torch.tensor(self.vq02), "vq06": torch.tensor(self.vq06),
                "mel": self.mel.contiguous(), "spk": self.spk.contiguous()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> PromptEncoding:
        return cls(mixed=t["mixed"].numpy(), vq02=t["vq02"].numpy(), vq06=t["vq06"].numpy(), mel=t["mel"],
                   spk=t["spk"])


def encode_prompt(tokenizer, decoder, audio: PromptAudio, timeline=None) -> PromptEncoding:
    """Tokens (tokenizer stage) + prompt mel and speaker embedding (decoder front end)."""
    stage = timeline.stage if timeline is not None else _no_stage
    with stage("tokenize"):
        tokens = tokenizer.wav2token(audio.samples, audio.sample_rate)
    # newer upstream tts.py (aacb90a) limits the prompt's peak to 0.6 before the decoder features
    limited = peak_limit(audio.samples)
    with stage("speaker"):
        spk = decoder.speaker_embedding(limited, audio.sample_rate)
    with stage("prompt_mel"):
        mel = decoder.prompt_features(limited, audio.sample_rate)
    return PromptEncoding(mixed=np.asarray(tokens.mixed, dtype=np.int64), vq02=np.asarray(tokens.vq02, np.int64),
                          vq06=np.asarray(tokens.vq06, np.int64), mel=torch.as_tensor(mel, dtype=torch.float32),
                          spk=torch.as_tensor(spk, dtype=torch.float32).reshape(-1))


class _NoStage:
    def __enter__(self):
        return {}

    def __exit__(self, *exc):
        return False


def _no_stage(_name, **_attrs):
    return _NoStage()
