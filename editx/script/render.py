"""Plan and render a parsed script through the Engine: every line checked before any work, lines
submitted concurrently (the worker batches them across voices), audio handed out in script order.

Each voice's clip is read once per script and goes through the Engine's prompt cache, so its
prompt is encoded once however many lines it speaks. A line's first job is its clone (with its
first edit attached); further edits run as edit jobs on the previous output, in the order written;
sound tags become a last paralinguistic edit. Segment times are counted in samples of the output,
so the timestamps match the audio exactly.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import numpy as np

from editx.errors import EditxError, QueueFullError, ValidationError
from editx.pipeline.types import MAX_SEED, CloneRequest, EditRequest, PromptAudio
from editx.script.parse import Edit, Pause, ScriptError, SpokenLine

log = logging.getLogger(__name__)

MAX_GAP_S = 5.0


@dataclass(frozen=True)
class VoiceRef:
    """A script voice label resolved to a prompt clip and its transcript."""

    label: str
    voice_id: str | None
    prompt: PromptAudio
    prompt_text: str


@dataclass(frozen=True)
class LinePlan:
    line: SpokenLine
    voice: VoiceRef
    seed: int
    first: CloneRequest
    more: tuple[Edit, ...]  # edits applied after the first job, in order


@dataclass(frozen=True)
class ScriptPlan:
    items: tuple[LinePlan | Pause, ...]
    seed: int
    gap_s: float
    sample_rate: int

    @property
    def lines(self) -> list[LinePlan]:
        return [i for i in self.items if isinstance(i, LinePlan)]


def line_seed(base: int, line: int) -> int:
    return (base * 1_000_003 + line) % (MAX_SEED + 1)


def plan_script(items: list, engine, resolve_voice: Callable[[str], VoiceRef], *, default_voice: str | None = None,
                seed: int | None = None, gap_s: float = 0.3) -> ScriptPlan:
    """Resolve voices and check every edit against what the engine's backend can do; raises
    ScriptError naming the first bad line. Nothing is submitted here."""
    if not 0 <= gap_s <= MAX_GAP_S:
        raise ValidationError(f"gap_s must be in 0..{MAX_GAP_S} seconds, got {gap_s}")
    base = seed if seed is not None else int.from_bytes(np.random.default_rng().bytes(7), "little")
    options = engine.edit_options()
    voices: dict[str, VoiceRef] = {}
    current = default_voice
    planned: list[LinePlan | Pause] = []
    for item in items:
        if isinstance(item, Pause):
            planned.append(item)
            continue
        label = item.voice or current
        if label is None:
            raise ScriptError(item.line, 1, "no voice for this line: start it with [name] or send a default voice")
        current = label
        if label not in voices:
            try:
                voices[label] = resolve_voice(label)
            except EditxError as exc:
                raise ScriptError(item.line, item.voice_column, str(exc)) from None
        planned.append(_plan_line(item, voices[label], line_seed(base, item.line), options, engine.backend.name))
    return ScriptPlan(tuple(planned), base, float(gap_s), engine.backend.sample_rate)


def _plan_line(item: SpokenLine, voice: VoiceRef, seed: int, options: dict, backend: str) -> LinePlan:
    from editx.lm.prompts import canonical_edit_type, validate_edit

    edits = []
    for edit, col in zip(item.edits, item.edit_columns, strict=True):
        try:
            kind = canonical_edit_type(edit.type)
            if kind not in options:
                raise ValidationError(f"the {kind} edit is not available on the {backend} backend (it can do: "
                                      f"{', '.join(options) or 'no edits'})")
            kind, info = validate_edit(kind, edit.info, item.tagged_text, audio_text=item.text)
        except ValidationError as exc:
            raise ScriptError(item.line, col, str(exc)) from None
        edits.append(Edit(kind, info))
    attach = edits[0] if edits and edits[0].type != "paralinguistic" else None
    try:
        first = CloneRequest(voice.prompt, voice.prompt_text, item.text, seed=seed, voice_id=voice.voice_id,
                             speed=item.speed, edit_type=attach.type if attach else None,
                             edit_info=attach.info if attach else None)
    except ValidationError as exc:
        raise ScriptError(item.line, None, str(exc)) from None
    return LinePlan(item, voice, seed, first, tuple(edits[1:] if attach else edits))


@dataclass
class _Chain:
    plan: LinePlan
    jobs_done: int = 0  # the clone is job 1, then one job per edit of `plan.more`
    last: np.ndarray | None = None  # the latest job's output (the next edit's input)
    audio: np.ndarray | None = None  # set when the line is finished

    @property
    def jobs(self) -> int:
        return 1 + len(self.plan.more)


class ScriptRender(Iterator[tuple[np.ndarray, dict]]):
    """Yields (samples to append, segment) in script order; samples include the gap before a line.
    Up to `window` jobs run at once, and no line more than 2 x window ahead of the one being handed
    out is started (a slow line never lets the rest pile up in memory); close() cancels."""

    def __init__(self, engine, plan: ScriptPlan, window: int | None = None) -> None:
        self.engine, self.plan = engine, plan
        cfg = engine.config
        self.window = window or max(1, min(cfg.max_batch, cfg.queue_size // 2))
        self._chains = [_Chain(p) for p in plan.lines]
        self._queued = list(range(len(self._chains)))  # not yet submitted, in order
        self._inflight: dict[Future, int] = {}
        self._next = 0  # next item of plan.items to hand out
        self._line = 0  # chains handed out so far
        self._cursor = 0  # samples handed out so far
        self._previous_speech = False

    def __next__(self) -> tuple[np.ndarray, dict]:
        if self._next >= len(self.plan.items):
            raise StopIteration
        item = self.plan.items[self._next]
        sr = self.plan.sample_rate
        if isinstance(item, Pause):
            n = round(item.seconds * sr)
            self._next += 1
            self._previous_speech = False
            return np.zeros(n, np.float32), self._segment({"kind": "pause", "line": item.line,
                                                          "seconds": item.seconds}, 0, n)
        chain = self._chains[self._line]
        try:
            while chain.audio is None:
                self._fill()
                self._wait_one()
        except BaseException:
            self.close()
            raise
        gap = round(self.plan.gap_s * sr) if self._previous_speech else 0
        audio, chain.audio = chain.audio, np.zeros(0, np.float32)  # hand it out once, keep no copy
        self._next += 1
        self._line += 1
        self._previous_speech = True
        p = chain.plan
        seg = {"kind": "speech", "line": p.line.line, "voice": p.voice.label, "voice_id": p.voice.voice_id,
               "text": p.line.text, "tagged_text": p.line.tagged_text,
               "edits": [e.to_dict() for e in _all_edits(p)], "speed": p.line.speed,
               "seed": p.seed}
        out = np.concatenate([np.zeros(gap, np.float32), audio]) if gap else audio
        return out, self._segment(seg, gap, out.size)

    def _segment(self, seg: dict, lead: int, size: int) -> dict:
        sr = self.plan.sample_rate
        start, end = self._cursor + lead, self._cursor + size
        self._cursor = end
        return {**seg, "start": round(start / sr, 3), "end": round(end / sr, 3), "start_sample": start,
                "end_sample": end}

    def _fill(self) -> None:
        while self._queued and len(self._inflight) < self.window:
            i = self._queued[0]
            if self._chains[i].jobs_done == 0 and i >= self._line + 2 * self.window:
                return  # bounded look-ahead: finished lines wait in memory until they are handed out
            try:
                self._submit(i)
            except QueueFullError:
                if not self._inflight:
                    raise
                return  # others are running; try again when one finishes
            self._queued.pop(0)

    def _submit(self, i: int) -> None:
        chain = self._chains[i]
        if chain.jobs_done == 0:
            request = chain.plan.first
        else:
            edit, line = chain.plan.more[chain.jobs_done - 1], chain.plan.line
            request = EditRequest(PromptAudio(chain.last, self.plan.sample_rate), line.text, edit.type, edit.info,
                                  text=line.tagged_text if edit.type == "paralinguistic" else None,
                                  seed=chain.plan.seed)
        self._inflight[self.engine.submit(request)] = i

    def _wait_one(self) -> None:
        if not self._inflight:
            return
        done, _ = wait(list(self._inflight), return_when=FIRST_COMPLETED)
        for fut in done:
            chain = self._chains[i := self._inflight.pop(fut)]
            try:
                result = fut.result()
            except EditxError as exc:
                raise _on_line(exc, chain.plan.line.line) from exc
            chain.jobs_done += 1
            chain.last = result.audio
            if chain.jobs_done == chain.jobs:
                chain.audio, chain.last = result.audio, None
            else:
                self._queued.insert(0, i)  # its next edit goes before lines not yet started

    def close(self) -> None:
        for fut in list(self._inflight):
            self.engine.cancel(fut)
        self._inflight.clear()
        self._queued.clear()


def _all_edits(p: LinePlan) -> list[Edit]:
    first = [Edit(p.first.edit_type, p.first.edit_info)] if p.first.edit_type else []
    return first + list(p.more)


def _on_line(exc: EditxError, line: int) -> EditxError:
    """The same error (same type, so the same HTTP status) with the line it came from."""
    new = copy.copy(exc)
    new.args = (f"line {line}: {exc}",) + tuple(exc.args[1:])
    return new


def render_all(engine, plan: ScriptPlan) -> tuple[np.ndarray, list[dict]]:
    """The whole script as one clip, and its segments (speech lines and pauses) with times."""
    parts, segments = [], []
    render = ScriptRender(engine, plan)
    for samples, seg in render:
        parts.append(samples)
        segments.append(seg)
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), segments
