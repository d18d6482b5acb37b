"""The `lite` backend behind the Engine protocol: Kokoro synthesis with a matched voice blend.

The voice blend is lite's prompt encoding, so it goes through the same prompt cache as the real
backend's tokens. Speed and vad edits run for real; other edits are rejected before queueing.
Long texts are split by the lite backend itself (its phoneme pieces, re-cut into units by
`cut_units`) and rendered one piece per round, so the Engine's scheduler can interleave requests;
a streaming clone hands each piece over as soon as it is rendered, giving the same audio as the
offline call whenever it starts alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from editx.config import EngineConfig
from editx.errors import BackendUnsupportedError
from editx.lite.phonemes import FIRST_PIECE_PHONEMES
from editx.pipeline.types import PromptAudio, Request

log = logging.getLogger(__name__)

LITE_EDITS = ("speed", "vad")
UNIT_CAP_PHONEMES = 200  # ~12 s of speech: no piece holds the worker long while other streams wait
PRIOR_S_PER_PHONEME = 0.0125  # Kokoro at RTF ~0.2 on 2 cores, ~16 phonemes a second (until measured)


def cut_units(pieces: list[str], first: int, cap: int) -> list[str]:
    """Re-cut phoneme pieces into a clone's units: the first at most `first` phonemes, each next one
    at most twice the one before, up to `cap` (cut at sentence, then phrase, then word ends)."""
    from editx.lite.phonemes import MAX_PHONEMES, split_pieces

    out, limit, queue = [], max(16, first), list(pieces)
    while queue:
        piece = queue.pop(0)
        if len(piece) > limit:
            piece, *rest = split_pieces(piece, MAX_PHONEMES, limit)
            queue[:0] = rest
        out.append(piece)
        limit = min(cap, 2 * limit)
    return out


@dataclass
class _CloneUnits:
    """A clone part between rounds: its pieces, the lazy renderer, the audio so far."""

    pieces: list[str]
    render: Iterator[tuple[str, np.ndarray]]
    done: int = 0
    audio: list[np.ndarray] = field(default_factory=list)


class LiteEngineBackend:
    name = "lite"
    native_speed = True
    segments_text = False  # LiteBackend splits long texts itself (its phoneme pieces)
    edit_window_s = None  # its edits (speed, vad) take clips of any length
    unit_rounds = True  # a round renders one piece of a clone; the Engine's scheduler picks whose
    unit_prior = (PRIOR_S_PER_PHONEME, float(FIRST_PIECE_PHONEMES))

    def __init__(self, config: EngineConfig, lite) -> None:
        from editx.lite.voice import FEATURE_VERSION

        self.config, self.lite = config, lite
        self.sample_rate = lite.sample_rate
        # The search's probe count changes the encoding: voices matched with another count are not reused.
        self.feature_version = f"{FEATURE_VERSION}-search{lite.search_probes}"
        self.cache = None

    @classmethod
    def load(cls, config: EngineConfig) -> LiteEngineBackend:
        from editx.lite.backend import LiteBackend

        threads = config.threads or 2
        log.info("loading the lite backend (Kokoro-82M int8 + voice matching)", extra={"threads": threads})
        return cls(config, LiteBackend.load(threads=threads, search_probes=config.lite_search_probes,
                                            search_budget_s=config.lite_search_budget_s))

    def fingerprint(self) -> str:
        return self.lite.fingerprint

    def supports_edit(self, edit_type: str) -> bool:
        return edit_type in LITE_EDITS

    def check(self, request: Request) -> None:
        for edit_type in (e.edit_type for e in request.chain):
            if edit_type not in LITE_EDITS:
                raise BackendUnsupportedError(
                    f"the {edit_type} edit needs the Step-Audio-EditX weights (start editx with --model-dir); "
                    f"the offline lite backend can do: {', '.join(LITE_EDITS)}")

    def needs_prompt(self, step) -> bool:
        return step.op == "clone"  # edits work on the samples themselves

    def encode_prompt(self, audio: PromptAudio, timeline=None):
        if timeline is None:
            return self.lite.encode_voice(audio.samples, audio.sample_rate)
        with timeline.stage("voice_match") as stage:
            enc = self.lite.encode_voice(audio.samples, audio.sample_rate)
            # The timeline says how the match went; out_of_time: the search's time budget ended it and
            # this is the best voice found so far.
            stage.update(similarity=round(float(enc.similarity), 4), search_probes=enc.search_probes,
                         out_of_time=enc.out_of_time)
            return enc

    @staticmethod
    def to_entry(enc):
        from editx.cache import CacheEntry

        tensors, meta = enc.to_tensors()
        return CacheEntry(tensors=tensors, meta={**meta, "kind": "lite"})

    @staticmethod
    def from_entry(entry):
        from editx.lite.voice import VoiceEncoding

        meta = {k: v for k, v in entry.meta.items() if k != "kind"}
        return VoiceEncoding.from_tensors(entry.tensors, meta)

    def run_round(self, jobs, done=None) -> None:
        """One unit of each job, one job after the other: a piece of a clone's text (the Engine's
        scheduler then picks whose piece is next), or a whole edit. `done(job)` as a job's part ends,
        so the Engine settles it at once; a job with pieces left is marked `yielded`."""
        for job in jobs:
            finished = True
            try:
                job.check_cancelled()
                finished = self._run(job)
            except Exception as exc:  # noqa: BLE001 - fail this job only
                job.fail(exc)
            job.yielded = not finished and not job.future.done()
            if not job.yielded and done is not None:
                done(job)

    def _run(self, job) -> bool:
        """Run the job's next unit; True when its part is over."""
        step, tl = job.step, job.timeline
        if step.op == "clone":
            audio = self._clone_unit(job)
            if audio is None:
                return False
        else:
            with tl.stage("edit", edit_type=step.edit_type, edit_info=step.edit_info):
                audio = self.lite.edit(job.current.samples, job.current.sample_rate, step.edit_type, step.edit_info)
        job.output = np.asarray(audio, dtype=np.float32).reshape(-1)
        job.rounds.append({"step": step.op, "edit_type": step.edit_type, "edit_info": step.edit_info,
                           "lm_tokens": 0, "audio_s": job.output.size / self.sample_rate})
        return True

    def _clone_unit(self, job) -> np.ndarray | None:
        """Render the clone's next piece (streamed at once); its whole audio after the last piece,
        None while pieces remain. The pieces are cut when the first one is asked for: the first
        FIRST_PIECE_PHONEMES / `job.unit_share` phonemes (streams starting together each get a
        smaller first piece, so the last of them hears audio about as early as one alone), each
        next piece at most twice the one before, up to UNIT_CAP_PHONEMES."""
        step, tl = job.step, job.timeline
        if job.units is None:
            pieces, table = self.lite.plan_synthesis(step.text, job.prompt, speed=step.speed)
            pieces = cut_units(pieces, FIRST_PIECE_PHONEMES // max(1, job.unit_share), UNIT_CAP_PHONEMES)
            job.units = _CloneUnits(pieces, self.lite.render_pieces(pieces, table, step.speed))
        units = job.units
        k, t0 = units.done, tl.elapsed()
        piece, audio = next(units.render)
        tl.add_stage("synthesize", t0, tl.elapsed() - t0, chars=len(piece), speed=step.speed, piece=k)
        job.ran_unit = ("first" if k == 0 else "next", float(len(piece)))
        units.done += 1
        units.audio.append(audio)
        if job.streaming:
            job.feed(audio)
        if units.done < len(units.pieces):
            job.next_unit = ("next", float(len(units.pieces[units.done])))
            return None
        job.units = job.next_unit = None
        return np.concatenate(units.audio)

    def warmup(self) -> None:
        self.lite.warmup()
        self.lite.synthesize("Warm up.", self.lite.voice())
