"""CAM++ speaker embedding (campplus.onnx): the 192-d x-vector that conditions the CosyVoice flow.

Front end as upstream `CosyVoiceFrontEnd.extract_spk_embedding` (stepfun-ai/Step-Audio-EditX
stepvocoder/cosyvoice2/cli/frontend.py): resample to 16 kHz (torchaudio.functional.resample on
float32), Kaldi fbank with 80 bins and no dither on the unscaled waveform, per-utterance mean
subtraction, then the ONNX graph on (1, T, 80); its first input and first output are used by index.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from editx.audio import features
from editx.errors import AudioError, ModelFilesError

log = logging.getLogger(__name__)

CAMPPLUS_SR = 16000
CAMPPLUS_BINS = 80
SPEAKER_DIM = 192
MIN_SAMPLES = CAMPPLUS_SR * 25 // 1000  # one 25 ms Kaldi frame at 16 kHz


def campplus_features(samples: np.ndarray, sample_rate: int) -> torch.Tensor:
    """Mono float waveform at any rate -> mean-normalised fbank (T, 80) float32 at 16 kHz."""
    wav = np.asarray(samples, dtype=np.float32)
    if wav.ndim != 1:
        raise AudioError(f"speaker embedding needs mono audio as a 1-D array, got shape {wav.shape}")
    if not np.isfinite(wav).all():
        raise AudioError("speaker embedding input contains NaN or infinite samples")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise AudioError(f"sample rate must be a positive integer, got {sample_rate}")
    x = torch.from_numpy(wav)
    if sample_rate != CAMPPLUS_SR:
        # the decoder front end resamples float32 with torchaudio.functional.resample
        x = features.resample(x, int(sample_rate), CAMPPLUS_SR, kernel_dtype=torch.float32)
    if x.shape[-1] < MIN_SAMPLES:
        raise AudioError(f"prompt audio is too short for a speaker embedding: {wav.shape[0]} samples at "
                         f"{sample_rate} Hz; at least 25 ms is needed (a few seconds of speech work best)")
    feat = features.kaldi_fbank(x, sr=CAMPPLUS_SR, num_mel_bins=CAMPPLUS_BINS, dither=0.0)  # (T, 80)
    return feat - feat.mean(dim=0, keepdim=True)


def check_inputs(inputs: list[tuple[str, str, list]], source: str = "campplus.onnx") -> None:
    """CAM++ takes one float input (1, T, 80) (upstream feeds it by position); the first output is used."""
    if len(inputs) != 1:
        raise ModelFilesError(f"{source} takes {len(inputs)} inputs {[i[0] for i in inputs]}; CAM++ takes one "
                              "(1, T, 80) fbank input: re-download Step-Audio-EditX")
    name, kind, shape = inputs[0]
    if kind != "float" or len(shape) != 3 or (isinstance(shape[-1], int) and shape[-1] != CAMPPLUS_BINS):
        raise ModelFilesError(f"{source}: input {name} is {kind} {shape}; CAM++ takes float (1, T, {CAMPPLUS_BINS})")


class SpeakerEncoder:
    """An onnxruntime session over campplus.onnx; thread-safe (onnxruntime sessions are)."""

    def __init__(self, session, path: Path) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name
        self.path = path

    @classmethod
    def load(cls, campplus_onnx: str | Path, *, threads: int = 1,
             providers: list[str] | tuple[str, ...] | None = None) -> SpeakerEncoder:
        """Open campplus.onnx; providers default to CPU, as upstream runs CAM++ on CPU."""
        import onnxruntime as ort  # imported here: the lite backend does not need it at import time

        path = Path(campplus_onnx)
        if not path.is_file():
            raise ModelFilesError(f"CAM++ model not found: {path}; expected campplus.onnx in the "
                                  "CosyVoice-300M-25Hz dir")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), sess_options=options,
                                           providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelFilesError(f"cannot load CAM++ model {path}: {exc}") from exc
        if not session.get_outputs():
            raise ModelFilesError(f"{path} has no outputs; it is not a CAM++ speaker model")
        from editx.tokenizer.speech import onnx_inputs

        inputs = onnx_inputs(session)
        check_inputs(inputs, str(path))
        log.debug("loaded CAM++ %s (input %s %s)", path, inputs[0][0], inputs[0][2])
        return cls(session, path)

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono waveform -> speaker embedding (192,) float32 (not normalised; the flow L2-normalises)."""
        feat = campplus_features(samples, sample_rate)
        out = self._session.run(None, {self._input: feat[None].numpy()})[0]
        emb = np.asarray(out, dtype=np.float32).reshape(-1)
        if emb.shape[0] != SPEAKER_DIM:
            raise ModelFilesError(f"{self.path} returned a {emb.shape[0]}-d vector; the CosyVoice flow needs "
                                  f"{SPEAKER_DIM}-d CAM++ embeddings")
        return emb
