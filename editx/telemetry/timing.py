"""Per-request stage timeline: measured phases, instant marks, and the request-level numbers.

Every figure a report quotes (stage times, RTF, time to first audio) comes from here. Clocks are
`time.perf_counter`; the engine sets `sync` (e.g. `torch.cuda.synchronize`) so queued GPU work is
finished before a clock is read, otherwise a stage would only measure kernel launches.

`to_dict()` shape: {"op", "cache", "stages": [{"name", "start_s", "duration_s", ...attrs}], "audio_s",
"rtf", "lm_tokens", "total_s", "ttfa_s"}; times in seconds from the timeline's start. Stages are sorted
by start; a stage opened inside another carries `parent`, an instant mark `instant: true` and zero
duration. `rtf` = total_s / audio_s (processing time per second of audio; < 1 is faster than real time).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_RESERVED_ATTRS = {"name", "start_s", "duration_s"}
FIRST_AUDIO = "first_audio"


@dataclass(frozen=True)
class StageRecord:
    name: str
    start_s: float
    duration_s: float
    attrs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "start_s": self.start_s, "duration_s": self.duration_s, **self.attrs}


def _check_attrs(attrs: Mapping[str, Any]) -> None:
    clash = _RESERVED_ATTRS & set(attrs)
    if clash:
        raise ValueError(f"stage attributes may not be named {sorted(clash)}")


@dataclass(frozen=True)
class TimelineSnapshot:
    """Immutable copy of a timeline, as carried by a Result."""

    op: str
    cache: Mapping[str, str]
    stages: tuple[StageRecord, ...]
    audio_s: float | None
    lm_tokens: int | None
    total_s: float
    ttfa_s: float | None

    @property
    def rtf(self) -> float | None:
        if self.audio_s is None or self.audio_s <= 0:
            return None
        return self.total_s / self.audio_s

    def stage(self, name: str) -> StageRecord | None:
        """The first stage with this name, if any."""
        return next((s for s in self.stages if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "cache": dict(self.cache),
            "stages": [s.to_dict() for s in self.stages],
            "audio_s": self.audio_s,
            "rtf": self.rtf,
            "lm_tokens": self.lm_tokens,
            "total_s": self.total_s,
            "ttfa_s": self.ttfa_s,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TimelineSnapshot:
        stages = tuple(
            StageRecord(
                s["name"],
                float(s["start_s"]),
                float(s["duration_s"]),
                MappingProxyType({k: v for k, v in s.items() if k not in _RESERVED_ATTRS}),
            )
            for s in d.get("stages", ())
        )
        return cls(
            op=d.get("op", ""),
            cache=MappingProxyType(dict(d.get("cache") or {})),
            stages=stages,
            audio_s=d.get("audio_s"),
            lm_tokens=d.get("lm_tokens"),
            total_s=float(d["total_s"]),
            ttfa_s=d.get("ttfa_s"),
        )

    def format_table(self) -> str:
        """Compact text table for the CLI: a summary line, then one row per stage."""

        def opt(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        head = [
            f"op {self.op or '-'}",
            f"total {self.total_s:.3f} s",
            f"audio {opt(self.audio_s, '.3f')} s",
            f"RTF {opt(self.rtf, '.3f')}",
            f"TTFA {opt(self.ttfa_s, '.3f')} s",
            f"LM tokens {opt(self.lm_tokens, 'd')}",
        ]
        if self.cache:
            head.append("cache " + ",".join(f"{k}={v}" for k, v in self.cache.items()))
        parents = {s.name: s.attrs.get("parent") for s in self.stages}

        def depth(s: StageRecord) -> int:
            d, p, seen = 0, s.attrs.get("parent"), set()
            while p is not None and p not in seen:
                seen.add(p)
                d, p = d + 1, parents.get(p)
            return d

        rows = [("stage", "start_s", "dur_s", "share", "attrs")]
        for s in self.stages:
            extra = " ".join(f"{k}={v}" for k, v in s.attrs.items() if k not in ("parent", "instant"))
            if s.attrs.get("instant"):
                rows.append(
                    ("  " * depth(s) + s.name, f"{s.start_s:.3f}", "·", "", ("instant " + extra).strip())
                )
                continue
            share = f"{100 * s.duration_s / self.total_s:.1f}%" if self.total_s > 0 else "-"
            rows.append(("  " * depth(s) + s.name, f"{s.start_s:.3f}", f"{s.duration_s:.3f}", share, extra))
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [" | ".join(head)]
        for r in rows:
            lines.append(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  {r[4]}".rstrip())
        return "\n".join(lines)


class Timeline:
    """Mutable recorder for one request; safe to use from the threads serving that request."""

    def __init__(
        self,
        op: str = "",
        *,
        sync: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.op = op
        self.sync = sync
        self._clock = clock
        self._t0 = clock()
        self._end: float | None = None
        self._stages: list[StageRecord] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self.cache: dict[str, str] = {}  # cached item (e.g. "prompt") -> tier that answered or "miss"
        self.audio_s: float | None = None
        self.lm_tokens: int | None = None
        self.ttfa_s: float | None = None

    def _now(self) -> float:
        if self.sync is not None:
            self.sync()
        return self._clock()

    def elapsed(self) -> float:
        """Seconds since the timeline started (no sync)."""
        return self._clock() - self._t0

    def _stack(self) -> list[str]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _append(self, rec: StageRecord) -> None:
        with self._lock:
            self._stages.append(rec)

    @contextmanager
    def stage(self, name: str, **attrs: Any) -> Iterator[dict[str, Any]]:
        """Time the block; yields its attribute dict so the block can add figures (`s["tokens"] = n`).
        A block that raises is still recorded, with `error` set to the exception's type name."""
        _check_attrs(attrs)
        stack = self._stack()
        parent = stack[-1] if stack else None
        extra = dict(attrs)
        start = self._now()
        stack.append(name)
        try:
            yield extra
        except BaseException as exc:
            extra["error"] = type(exc).__name__
            raise
        finally:
            stack.pop()
            end = self._now()
            if parent is not None:
                extra.setdefault("parent", parent)
            # Keys the block added that clash with the record's own fields get a trailing "_".
            clean = {f"{k}_" if k in _RESERVED_ATTRS else k: v for k, v in extra.items()}
            self._append(StageRecord(name, start - self._t0, end - start, MappingProxyType(clean)))

    def mark(self, name: str, **attrs: Any) -> float:
        """Record an instant event; returns its time. The first `first_audio` mark sets `ttfa_s`."""
        _check_attrs(attrs)
        t = self._now() - self._t0
        self._append(StageRecord(name, t, 0.0, MappingProxyType({**attrs, "instant": True})))
        if name == FIRST_AUDIO and self.ttfa_s is None:
            self.ttfa_s = t
        return t

    def add_stage(self, name: str, start_s: float, duration_s: float, **attrs: Any) -> None:
        """Record a stage measured elsewhere (times relative to this timeline's start)."""
        _check_attrs(attrs)
        if not (math.isfinite(start_s) and math.isfinite(duration_s)) or duration_s < 0 or start_s < 0:
            raise ValueError(f"stage {name!r}: need finite start_s >= 0 and duration_s >= 0")
        self._append(StageRecord(name, float(start_s), float(duration_s), MappingProxyType(dict(attrs))))

    def set_cache(self, item: str, outcome: str) -> None:
        """Note which cache tier answered for `item` ("memory", "disk", "shared" or "miss")."""
        self.cache[item] = outcome

    def finish(self, *, audio_s: float | None = None, lm_tokens: int | None = None) -> TimelineSnapshot:
        """Stop the total clock (first call wins) and return the snapshot."""
        if audio_s is not None:
            self.audio_s = float(audio_s)
        if lm_tokens is not None:
            self.lm_tokens = int(lm_tokens)
        if self._end is None:
            self._end = self._now()
        return self.snapshot()

    def snapshot(self) -> TimelineSnapshot:
        """Immutable copy; the total runs to now unless `finish()` was called."""
        end = self._end if self._end is not None else self._clock()
        with self._lock:
            order = sorted(enumerate(self._stages), key=lambda p: (p[1].start_s, p[0]))
            stages = tuple(rec for _, rec in order)
        return TimelineSnapshot(
            op=self.op,
            cache=MappingProxyType(dict(self.cache)),
            stages=stages,
            audio_s=self.audio_s,
            lm_tokens=self.lm_tokens,
            total_s=end - self._t0,
            ttfa_s=self.ttfa_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return self.snapshot().to_dict()

    def format_table(self) -> str:
        return self.snapshot().format_table()
