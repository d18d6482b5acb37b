"""Which job's next unit of work runs when streams and offline requests share the Engine's worker.

A pure policy (no threads, no clock of its own): the Engine describes each job it holds as a
`Candidate` (streaming or not; for a stream, when its first audio went out and how much audio it
has delivered; the estimated cost of its next unit) and `plan` picks, in order:

1. a new stream's first unit (oldest first), when running it leaves every playing stream enough
   buffered audio to still get its own next unit in time, those units run one after the other in
   deadline order ("safe"; a stream whose next unit cannot arrive before it runs dry anyway is not
   protected: when the machine cannot keep the playing streams ahead, a new listener waiting for
   any audio at all comes first);
2. an offline job that waited `max_wait_s` for a unit: one unit, whatever the streams' state, so
   offline work is never starved;
3. playing streams whose next unit must start within `lead_s` to arrive before their listener runs
   dry, the least time left first (least laxity: earliest deadline first on one machine);
4. offline work, when safe (it fills the gaps while every stream is comfortably ahead);
5. the remaining playing streams, least time left first (work ahead while nothing else waits);
6. when nothing is safe (the machine cannot keep everyone ahead): the playing stream with the least
   time left. A new stream then waits until playing ones can spare the time: capacity-aware
   queueing rather than starting a stream that would make every listener stutter.

A playing stream's buffered audio ("slack") is the audio it delivered minus the time since its
first audio went out (its listener's playback clock, assuming playback starts at the first chunk).
A paused candidate (its reader stopped reading, or went away) is never picked and costs nothing.

Unit costs come from measurement: `UnitCosts` fits seconds against work size (phonemes for lite,
LM tokens for editx) per kind of unit, over exponentially weighted moving averages.
`playback` replays a stream's chunk arrival times against a listener's clock (the bench and the
tests count underruns with it).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

LEAD_S = 2.0  # a stream this far ahead of its listener can let offline work run first
MAX_WAIT_S = 10.0  # an offline job waiting this long for a unit gets one, whatever the streams' state
GUARD_S = 0.05  # margin kept on every playing stream's buffer when deciding what is safe to run
EWMA_ALPHA = 0.3  # weight of the newest measurement in a unit-cost average
POLICIES = ("fair", "fifo")  # fifo: admission order, each job to its end (the before figure)


@dataclass(frozen=True)
class Candidate:
    """One job the worker holds, as the policy sees it (times in the Engine's monotonic seconds)."""

    key: Hashable
    streaming: bool
    arrived_at: float  # admitted
    cost_s: float  # estimated seconds of its next unit
    first_audio_at: float | None = None  # a stream's first audio went out (None: it has not started)
    delivered_s: float = 0.0  # audio seconds delivered so far (a stream)
    last_unit_at: float | None = None  # when it last ran a unit (offline: how long it has waited)
    paused: bool = False  # its reader stopped reading (or went away): not run, costs nothing

    @property
    def playing(self) -> bool:
        return self.streaming and self.first_audio_at is not None

    def slack(self, now: float) -> float:
        """Audio delivered ahead of the listener's playback clock (negative: it has run dry)."""
        assert self.first_audio_at is not None
        return self.delivered_s - (now - self.first_audio_at)

    def laxity(self, now: float) -> float:
        """How long its next unit can still wait before the stream runs dry."""
        return self.slack(now) - self.cost_s

    def waited(self, now: float) -> float:
        return now - (self.last_unit_at if self.last_unit_at is not None else self.arrived_at)


def plan(candidates: Iterable[Candidate], now: float, n: int = 1, *, policy: str = "fair",
         lead_s: float = LEAD_S, max_wait_s: float = MAX_WAIT_S) -> list[Hashable]:
    """The keys of up to `n` candidates to run next, in order. For n > 1 (a batch) each pick is made
    as if the ones before it had run (the clock advanced by their estimated cost)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown stream schedule {policy!r}; one of {', '.join(POLICIES)}")
    pool = [c for c in candidates if not c.paused]
    if policy == "fifo":
        return [c.key for c in sorted(pool, key=lambda c: c.arrived_at)[:n]]
    picks: list[Hashable] = []
    clock = now
    while pool and len(picks) < n:
        best = pick(pool, clock, lead_s=lead_s, max_wait_s=max_wait_s)
        picks.append(best.key)
        pool.remove(best)
        clock += best.cost_s
    return picks


def pick(pool: Sequence[Candidate], now: float, *, lead_s: float = LEAD_S,
         max_wait_s: float = MAX_WAIT_S) -> Candidate:
    """The one candidate to run next (see the module docstring for the order)."""
    playing = sorted((c for c in pool if c.playing), key=lambda c: c.laxity(now))
    new = sorted((c for c in pool if c.streaming and not c.playing), key=lambda c: c.arrived_at)
    offline = sorted((c for c in pool if not c.streaming), key=lambda c: c.arrived_at)

    def safe(c: Candidate) -> bool:
        """After `c`, every playing stream still gets its next unit in time, all run in deadline order."""
        t = c.cost_s
        for s in playing:
            if s is not c and s.laxity(now) >= 0:  # one that runs dry anyway is not held ahead of a new listener
                t += s.cost_s
                if t + GUARD_S > s.slack(now):
                    return False
        return True

    for c in new:
        if safe(c):
            return c
    aged = [c for c in offline if c.waited(now) >= max_wait_s]
    if aged:
        return aged[0]
    urgent = [s for s in playing if s.laxity(now) < lead_s]
    if urgent:
        return urgent[0]
    for c in offline:
        if safe(c):
            return c
    if playing:
        return playing[0]
    return (new or offline)[0]


class UnitCosts:
    """Seconds a unit of work takes, from measurement: per kind of unit (e.g. 'first', 'next'), an
    affine fit `overhead + rate * size` over exponentially weighted moments of the units seen (a
    call's fixed overhead makes small units dearer per size than large ones)."""

    def __init__(self, prior_s_per_size: float, alpha: float = EWMA_ALPHA) -> None:
        if not prior_s_per_size > 0 or not 0 < alpha <= 1:
            raise ValueError("the prior must be > 0 and alpha in (0, 1]")
        self.prior, self.alpha = prior_s_per_size, alpha
        self._moments: dict[str, list[float]] = {}  # kind -> EWMA of [x, y, x*x, x*y]

    def estimate(self, kind: str, size: float) -> float:
        """Estimated seconds of a unit of `size` (a kind not measured yet: the mean of the kinds
        that were, else the prior)."""
        size = max(size, 0.0)
        if kind in self._moments:
            return self._predict(self._moments[kind], size)
        if self._moments:
            return sum(self._predict(m, size) for m in self._moments.values()) / len(self._moments)
        return self.prior * size

    @staticmethod
    def _predict(m: list[float], size: float) -> float:
        x, y, xx, xy = m
        var = xx - x * x
        if var <= 1e-9 * max(xx, 1e-12):  # one size seen so far: proportional to size
            return y / x * size if x > 0 else y
        slope = max(0.0, (xy - x * y) / var)
        overhead = max(0.0, y - slope * x)
        return overhead + slope * size

    def observe(self, kind: str, size: float, seconds: float) -> None:
        if seconds < 0 or size <= 0:
            return
        sample = [size, seconds, size * size, size * seconds]
        m = self._moments.get(kind)
        if m is None:
            self._moments[kind] = sample
        else:
            for i, v in enumerate(sample):
                m[i] += self.alpha * (v - m[i])


@dataclass(frozen=True)
class Playback:
    """A listener's experience of one stream: when audio started, how often and how long it ran dry."""

    first_audio_s: float  # from the request to its first chunk
    underruns: int  # times a chunk arrived after everything before it had played
    gap_s: float  # total silence those gaps added
    audio_s: float
    done_s: float  # from the request to its last chunk


def playback(start: float, chunks: Sequence[tuple[float, float]], tolerance_s: float = 0.0) -> Playback:
    """Replay `chunks` ((arrival time, audio seconds), in order) for a listener who starts playing at
    the first chunk and, after running dry, resumes as the next chunk arrives. An arrival counts as
    an underrun when it comes more than `tolerance_s` after the audio before it finished playing."""
    audible = [(t, s) for t, s in chunks if s > 0]  # an empty last chunk only says "the end"
    if not audible:
        raise ValueError("a stream without audio has no playback")
    played_until = audible[0][0]
    underruns, gap = 0, 0.0
    for arrival, seconds in audible:
        if arrival > played_until:
            if arrival - played_until > tolerance_s:
                underruns += 1
                gap += arrival - played_until
            played_until = arrival
        played_until += seconds
    return Playback(audible[0][0] - start, underruns, gap, sum(s for _, s in audible), chunks[-1][0] - start)
