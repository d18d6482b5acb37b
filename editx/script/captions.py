"""Captions from a rendered script's segments: SubRip (SRT) and WebVTT, one cue per spoken line."""

from __future__ import annotations


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cue_text(seg: dict) -> str:
    # a cue's text must not contain a blank line (it would end the cue) nor "-->"
    text = " ".join(seg["text"].split()).replace("-->", "->")
    return f"{seg['voice']}: {text}" if seg.get("voice") else text


def _speech(segments: list[dict]) -> list[dict]:
    return [s for s in segments if s.get("kind") == "speech"]


def to_srt(segments: list[dict]) -> str:
    cues = [f"{n}\n{_stamp(s['start'], ',')} --> {_stamp(s['end'], ',')}\n{_cue_text(s)}\n"
            for n, s in enumerate(_speech(segments), start=1)]
    return "\n".join(cues)


def to_vtt(segments: list[dict]) -> str:
    cues = []
    for s in _speech(segments):
        words = " ".join(s["text"].split()).replace("-->", "->").replace("&", "&amp;").replace("<", "&lt;")
        body = f"<v {s['voice']}>{words}" if s.get("voice") else words  # WebVTT's voice span names the speaker
        cues.append(f"{_stamp(s['start'], '.')} --> {_stamp(s['end'], '.')}\n{body}\n")
    return "WEBVTT\n\n" + "\n".join(cues)


CAPTION_FORMATS = {"srt": to_srt, "vtt": to_vtt}
