"""The streaming-aware scheduling policy, on a simulated clock (no threads, no wall time)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from editx.pipeline.stream_schedule import MAX_WAIT_S, Candidate, UnitCosts, plan, playback


@dataclass
class SimJob:
    name: str
    arrive: float
    units: list[tuple[float, float]]  # (true compute seconds, audio seconds) per unit
    streaming: bool = True
    paused_from: float | None = None  # its reader stops reading at this time
    done: int = 0
    chunks: list[tuple[float, float]] = field(default_factory=list)  # (delivered at, audio s)
    ran: list[float] = field(default_factory=list)  # start time of each unit it ran
    last_unit_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.done == len(self.units)


def simulate(jobs: list[SimJob], policy: str = "fair", horizon: float = 1e4) -> list[tuple[float, str]]:
    """One worker running one unit at a time, chosen by `plan` from estimated costs (measured as
    units finish, like the Engine does); returns (start time, job) per unit run."""
    costs = UnitCosts(prior_s_per_size=0.3)
    order, now = [], 0.0
    while now < horizon:
        live = [j for j in jobs if j.arrive <= now and not j.finished]
        if not live:
            pending = [j.arrive for j in jobs if j.arrive > now]
            if not pending:
                break
            now = min(pending)
            continue
        cands = []
        for j in live:
            kind = "first" if j.done == 0 else "next"
            cands.append(Candidate(
                key=j.name, streaming=j.streaming, arrived_at=j.arrive,
                cost_s=costs.estimate(kind, j.units[j.done][1]),
                first_audio_at=j.chunks[0][0] if j.chunks else None, delivered_s=sum(s for _, s in j.chunks),
                last_unit_at=j.last_unit_at, paused=j.paused_from is not None and now >= j.paused_from))
        picked = plan(cands, now, policy=policy)
        if not picked:  # only paused jobs: idle until something arrives
            later = [j.arrive for j in jobs if j.arrive > now]
            if not later:
                break
            now = min(later)
            continue
        job = next(j for j in live if j.name == picked[0])
        cost, audio = job.units[job.done]
        job.ran.append(now)
        order.append((now, job.name))
        costs.observe("first" if job.done == 0 else "next", audio, cost)
        now += cost
        job.done += 1
        job.last_unit_at = now
        if job.streaming:
            job.chunks.append((now, audio))
    return order


def growing(first_audio: float = 0.6, n: int = 6, rtf: float = 0.2) -> list[tuple[float, float]]:
    """A stream's units: a short first one, then larger ones (as the lite backend cuts them)."""
    audio = [first_audio] + [min(4.0, first_audio * 2 ** k) for k in range(1, n)]
    return [(0.05 + rtf * a, a) for a in audio]


def test_a_new_streams_first_chunk_comes_before_a_running_streams_remaining_chunks():
    def run(policy):
        a = SimJob("a", 0.0, growing(n=6))
        b = SimJob("b", 0.1, growing(n=6))  # arrives while a's first unit runs
        simulate([a, b], policy)
        return a, b

    a, b = run("fair")
    assert b.chunks[0][0] < a.chunks[1][0]  # b's first chunk right after a's first, before a's second
    assert all(playback(j.arrive, j.chunks).underruns == 0 for j in (a, b))
    a, b = run("fifo")  # the before picture: b waits for all of a
    assert b.chunks[0][0] > a.chunks[-1][0]


def test_b_four_streams_play_without_underruns_when_capacity_suffices():
    # 4 listeners at once, real-time factor 0.1 + 0.05 s per call each: about half the capacity
    jobs = [SimJob(f"s{k}", 0.0, growing(n=8, rtf=0.1)) for k in range(4)]
    simulate(jobs, "fair")
    plays = [playback(j.arrive, j.chunks) for j in jobs]
    assert [p.underruns for p in plays] == [0, 0, 0, 0]
    alone = SimJob("alone", 0.0, growing(n=8, rtf=0.1))
    simulate([alone], "fair")
    solo_first = playback(0.0, alone.chunks).first_audio_s
    # every listener hears its first audio within the time of the streams' first two units
    assert max(p.first_audio_s for p in plays) <= 8 * solo_first + 1e-9
    fifo = [SimJob(f"s{k}", 0.0, growing(n=8, rtf=0.1)) for k in range(4)]
    simulate(fifo, "fifo")
    assert max(playback(j.arrive, j.chunks).first_audio_s for j in fifo) > 2 * max(p.first_audio_s for p in plays)


def test_b_staggered_streams_never_run_dry_once_started():
    jobs = [SimJob(f"s{k}", 0.7 * k, growing(n=8, rtf=0.1)) for k in range(4)]
    simulate(jobs, "fair")
    assert [playback(j.arrive, j.chunks).underruns for j in jobs] == [0, 0, 0, 0]


def test_c_offline_work_fills_gaps_and_finishes_under_stream_overload():
    # streams keep arriving (about twice what the worker can keep up with), one offline job among them
    streams = [SimJob(f"s{k}", 0.5 * k, growing(n=5)) for k in range(40)]
    offline = SimJob("off", 1.0, [(0.3, 0.0)] * 5, streaming=False)
    simulate(streams + [offline], "fair")
    last_stream = max(j.ran[-1] for j in streams)
    assert offline.finished
    assert offline.ran[-1] < last_stream  # it did not wait for the streams to dry up
    # at worst one unit per wait period, plus the stream unit under way (<= 0.85 s) and its own (0.3 s)
    assert offline.ran[-1] <= offline.arrive + 5 * (MAX_WAIT_S + 0.85 + 0.3)


def test_c_offline_runs_while_streams_are_comfortably_ahead():
    s = SimJob("s", 0.0, [(0.1, 5.0)] + [(0.1, 5.0)] * 3)
    off = SimJob("off", 0.0, [(0.5, 0.0)] * 3, streaming=False)
    simulate([s, off], "fair")
    assert off.ran[0] < s.ran[-1]  # interleaved, not after the whole stream
    assert playback(0.0, s.chunks).underruns == 0


def test_d_a_stream_whose_reader_stopped_costs_nothing_at_the_next_unit():
    gone = SimJob("gone", 0.0, growing(n=8), paused_from=0.5)
    other = SimJob("other", 0.0, growing(n=8))
    simulate([gone, other], "fair", horizon=100.0)
    assert gone.ran and max(gone.ran) < 0.5 and not gone.finished  # the unit under way ends; no other
    assert other.finished
    # its audio ran dry long ago, yet it holds nobody back: a new stream starts at once
    now = 50.0
    stale = Candidate("gone", True, 0.0, 0.2, first_audio_at=0.1, delivered_s=1.0, paused=True)
    fresh = Candidate("new", True, now, 0.2)
    assert plan([stale, fresh], now) == ["new"]
    assert plan([stale], now) == []


def test_plan_batches_in_policy_order_and_refuses_unknown_policies():
    now = 10.0
    dry = Candidate("dry", True, 0.0, 0.2, first_audio_at=5.0, delivered_s=5.5)  # 0.5 s left
    ahead = Candidate("ahead", True, 0.0, 0.2, first_audio_at=5.0, delivered_s=20.0)
    new = Candidate("new", True, 9.0, 0.2)
    off = Candidate("off", False, 1.0, 0.2)
    assert plan([ahead, off, dry, new], now, n=4) == ["new", "dry", "off", "ahead"]
    assert plan([ahead, off, dry, new], now, n=4, policy="fifo") == ["ahead", "dry", "off", "new"]
    with pytest.raises(ValueError, match="unknown stream schedule"):
        plan([new], now, policy="round-robin")


def test_unit_costs_follow_measurements():
    costs = UnitCosts(prior_s_per_size=1.0)
    assert costs.estimate("first", 2.0) == 2.0  # the prior
    for _ in range(20):
        costs.observe("next", 10.0, 1.0)
    assert costs.estimate("next", 5.0) == pytest.approx(0.5)
    assert costs.estimate("first", 5.0) == pytest.approx(0.5)  # an unmeasured kind borrows the measured mean
    for k in range(40):  # a fixed overhead per call: 0.2 s + 0.05 s per size unit
        size = 2.0 + k % 7
        costs.observe("first", size, 0.2 + 0.05 * size)
    assert costs.estimate("first", 4.0) == pytest.approx(0.4, rel=1e-6)
    assert costs.estimate("first", 20.0) == pytest.approx(1.2, rel=1e-6)


def test_playback_counts_gaps():
    p = playback(0.0, [(1.0, 1.0), (1.5, 1.0), (3.5, 1.0), (4.0, 0.0)])
    assert (p.first_audio_s, p.underruns, p.done_s) == (1.0, 1, 4.0)
    assert p.gap_s == pytest.approx(0.5)
    assert playback(0.0, [(1.0, 1.0), (2.05, 1.0)], tolerance_s=0.1).underruns == 0


def test_under_overload_new_listeners_still_hear_audio_early():
    # each stream alone needs 3 s of compute per second of audio: nobody can play without gaps, so
    # holding new listeners back to protect the playing ones would only make them wait
    def run(policy):
        jobs = [SimJob(f"s{k}", 0.0, growing(n=5, rtf=3.0)) for k in range(4)]
        simulate(jobs, policy)
        return [playback(0.0, j.chunks) for j in jobs]

    fair, fifo = run("fair"), run("fifo")
    first_units = sum(growing(n=5, rtf=3.0)[0][0] for _ in range(4))
    assert max(p.first_audio_s for p in fair) <= first_units + 1e-9  # the four first units, back to back
    assert max(p.first_audio_s for p in fifo) > 10 * max(p.first_audio_s for p in fair)
