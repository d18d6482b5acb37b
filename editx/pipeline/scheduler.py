"""The Engine's side of stream scheduling: its held Jobs as the policy's Candidates, and unit costs
measured as rounds run. The policy itself is pure (stream_schedule.py); this holds its state.

With a backend that runs `unit_rounds` (lite: a round renders one piece of one job), the Engine asks
`pick` for the one job whose unit runs next and reports each round's time to `measured`. With a
backend that runs whole rounds (editx: one LM batch), `order` puts the batch in policy order.
"""

from __future__ import annotations

import time

from editx.pipeline.job import Job
from editx.pipeline.stream_schedule import Candidate, UnitCosts, plan

FIRST = "first"  # kinds of unit: a stream's first (it decides time to first audio), and the rest
NEXT = "next"


class StreamScheduler:
    def __init__(self, policy: str, sample_rate: int, prior_s_per_size: float, first_size: float) -> None:
        self.policy, self.sample_rate = policy, sample_rate
        self.costs = UnitCosts(prior_s_per_size)
        self.first_size = first_size  # a job's first unit before the backend has cut it (its usual size)

    def candidate(self, job: Job, now: float) -> Candidate:
        kind, size = job.next_unit or (FIRST, self.first_size / max(1, job.unit_share))
        paused = job.buffer is not None and job.buffer.paused
        return Candidate(key=id(job), streaming=job.emit is not None, arrived_at=job.admitted_at,
                         cost_s=self.costs.estimate(kind, size), first_audio_at=job.first_audio_at,
                         delivered_s=job.emitted_samples / self.sample_rate, last_unit_at=job.last_unit_at,
                         paused=paused)

    def order(self, jobs: list[Job], n: int) -> list[Job]:
        """Up to `n` of `jobs` in the order the policy runs them (a paused stream is left out)."""
        now = time.monotonic()
        if self.policy == "fair":
            new = [j for j in jobs if j.emit is not None and j.first_audio_at is None and j.units is None]
            for job in new:  # streams starting together share the time to first audio
                job.unit_share = max(job.unit_share, len(new))
        by_id = {id(j): j for j in jobs}
        return [by_id[k] for k in plan([self.candidate(j, now) for j in jobs], now, n, policy=self.policy)]

    def measured(self, job: Job, seconds: float) -> None:
        """A round that ran one unit of `job` took `seconds`."""
        job.last_unit_at = time.monotonic()
        if job.ran_unit is not None:
            self.costs.observe(*job.ran_unit, seconds)
            job.ran_unit = None
