"""Long-form planning: cut one request step into the parts the model handles well.

A clone step whose text is longer than one segment becomes one part per sentence segment, all
spoken with the step's prompt (one prompt encoding, one LM voice prefix) and joined with pauses.
An edit of a clip longer than the backend's window becomes one part per piece of the clip cut at
silences, each with its share of the transcript, joined with short cross-fades.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from editx.config import EngineConfig
from editx.pipeline.segment import split_audio_at_silences, split_text, split_transcript_for_spans, text_budget
from editx.pipeline.types import PromptAudio, Step

log = logging.getLogger(__name__)

Part = tuple[Step, PromptAudio | None]  # the step for this part; its own input clip (None: the step's input)


def plan_parts(step: Step, source: PromptAudio, config: EngineConfig, backend) -> tuple[list[Part], float]:
    """The parts of `step` (one part when nothing needs cutting) and the pause (s) between them.

    Backends say `segments_text` (True: split long texts here) and `edit_window_s` (clips longer
    than this many seconds are edited in parts; None: any length).
    """
    parts: list[Part] = [(step, None)]
    pause = config.segment_pause_s
    if step.op == "clone" and backend.segments_text:
        max_chars, lang = text_budget(step.text, config.segment_max_chars)
        segments = split_text(step.text, max_chars=max_chars, min_chars=min(40, max_chars // 2), lang=lang)
        if len(segments) > 1:
            parts = [(replace(step, text=t), None) for t in segments]
    window = backend.edit_window_s
    if step.op == "edit" and window and source.duration_s > window:
        parts, pause = clip_parts(step, source, window), 0.0
    if len(parts) > 1:
        log.info("long-form step", extra={"op": step.op, "parts": len(parts)})
    return parts, pause


def clip_parts(step: Step, audio: PromptAudio, window: float) -> list[Part]:
    """An edit step over a long clip → parts of at most `window` seconds cut at silences."""
    spans = split_audio_at_silences(audio.samples, audio.sample_rate, max_seconds=window)
    texts = split_transcript_for_spans(step.text, spans, audio.sample_rate)
    news = (split_transcript_for_spans(step.new_text, spans, audio.sample_rate) if step.new_text
            else [None] * len(spans))
    merged: list[list] = []  # a part without words joins its neighbour (the model needs a transcript)
    for (a, b), text, new in zip(spans, texts, news):
        if merged and (not text or not merged[-1][1]):
            prev = merged[-1]
            merged[-1] = [(prev[0][0], b), f"{prev[1]} {text}".strip(), " ".join(x for x in (prev[2], new) if x) or None]
        else:
            merged.append([(a, b), text, new])
    return [(replace(step, text=text, new_text=new), PromptAudio(audio.samples[a:b], audio.sample_rate))
            for (a, b), text, new in merged]
