"""`editx bench --verify-texts N`: what output verification costs and what its retries buy.

Over N texts (the bench sentences), on one warm voice, side by side per text with the same seed:
- plain: the request without checks;
- checked once (attempts=1): the same request scored; the `verify` stage's share of its time;
- retried (attempts=K): best of up to K seeds; the score distribution against `checked once`.
Streaming: time to first audio with and without verification (streams are checked after the fact,
so the first audio should not move; the done event comes later by the check's cost).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np

from editx.bench import SENTENCES, Requests

log = logging.getLogger(__name__)


def _med(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def _p90(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.percentile(values, 90)) if values else None


def _verify_s(result) -> float:
    return sum(s["duration_s"] for s in result.timeline["stages"] if s["name"] == "verify")


def _scores(results: list) -> dict[str, Any]:
    v = [r.verification for r in results]
    return {"error_rate_median": _med(x.error_rate for x in v), "error_rate_p90": _p90(x.error_rate for x in v),
            "speaker_sim_median": _med(x.speaker_sim for x in v), "pass_rate": float(np.mean([x.verified for x in v])),
            "attempts_mean": float(np.mean([len(x.attempts) for x in v])),
            "total_s_median": _med(r.timeline["total_s"] for r in results)}


def _stream(engine, req, verify) -> dict[str, float | None]:
    t0 = time.perf_counter()
    with engine.stream(req, verify=verify) as stream:
        for _ in stream:
            pass
    done = time.perf_counter() - t0
    return {"ttfa_s": stream.result.timeline.get("ttfa_s"), "done_s": done}


def run_verify_section(pool, arm, reqs: Requests, n_texts: int, *, attempts: int = 3) -> dict[str, Any]:
    """The section's JSON (see the module docstring)."""
    from editx.verify.policy import VerifyPolicy

    pool.activate(arm)
    engine = arm.engine
    base = VerifyPolicy.from_config(engine.config)
    once, retried_policy = replace(base, attempts=1), replace(base, attempts=attempts)
    sampling = None  # the arm's own (a fixture's --max-new-tokens cap holds: the check costs per audio second)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(n_texts)]
    engine.run(reqs.make("clone", 0, text=texts[0], sampling=sampling), verify=once)  # voice and models warm
    plain, checked, retried, rows = [], [], [], []
    for i, text in enumerate(texts):
        req = reqs.make_seeded("clone", reqs.seed + i, text=text, sampling=sampling)
        p = engine.run(req, verify=False)
        c = engine.run(req, verify=once)
        r = engine.run(req, verify=retried_policy)
        plain.append(p)
        checked.append(c)
        retried.append(r)
        rows.append({"text": text, "plain_s": p.timeline["total_s"], "checked_s": c.timeline["total_s"],
                     "verify_s": _verify_s(c), "error_rate_once": c.verification.error_rate,
                     "error_rate_retried": r.verification.error_rate, "attempts": len(r.verification.attempts),
                     "speaker_sim_once": c.verification.speaker_sim, "speaker_sim_retried": r.verification.speaker_sim})
        log.info("bench verify text", extra={"i": i, "verify_s": round(rows[-1]["verify_s"], 3),
                                             "error_rate": round(c.verification.error_rate, 3)})
    streams = []
    for i, text in enumerate(texts[:2]):
        req = reqs.make_seeded("clone", reqs.seed + i, text=text, sampling=sampling)
        streams.append({"plain": _stream(engine, req, False), "verified": _stream(engine, req, once)})
    shares = [row["verify_s"] / row["checked_s"] for row in rows if row["checked_s"]]
    return {
        "arm": arm.name, "backend": engine.backend.name, "texts": n_texts, "attempts": attempts,
        "thresholds": {"max_wer": base.max_wer, "min_speaker_sim": base.min_speaker_sim},
        "plain_s_median": _med(r["plain_s"] for r in rows), "checked_s_median": _med(r["checked_s"] for r in rows),
        "verify_s_median": _med(r["verify_s"] for r in rows), "verify_share_median": _med(shares),
        "once": _scores(checked), "retried": _scores(retried),
        "stream": {"ttfa_plain_s": _med(s["plain"]["ttfa_s"] for s in streams),
                   "ttfa_verified_s": _med(s["verified"]["ttfa_s"] for s in streams),
                   "done_plain_s": _med(s["plain"]["done_s"] for s in streams),
                   "done_verified_s": _med(s["verified"]["done_s"] for s in streams)},
        "rows": rows,
    }


def markdown(section: dict[str, Any]) -> list[str]:
    """The section's lines in bench.md."""
    def f(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    o, r, s = section["once"], section["retried"], section["stream"]
    return [
        f"## Verification ({section['backend']}, {section['texts']} texts, thresholds {section['thresholds']})", "",
        f"verify stage: median {f(section['verify_s_median'])} s = {f(section['verify_share_median'], '.1%')} of a "
        f"checked request ({f(section['checked_s_median'])} s; plain {f(section['plain_s_median'])} s)", "",
        "| | checked once | best of " + str(section["attempts"]) + " |", "|---|---|---|",
        f"| error rate median / p90 | {f(o['error_rate_median'])} / {f(o['error_rate_p90'])} | "
        f"{f(r['error_rate_median'])} / {f(r['error_rate_p90'])} |",
        f"| speaker sim median | {f(o['speaker_sim_median'])} | {f(r['speaker_sim_median'])} |",
        f"| pass rate | {f(o['pass_rate'], '.0%')} | {f(r['pass_rate'], '.0%')} |",
        f"| attempts mean | {f(o['attempts_mean'], '.2f')} | {f(r['attempts_mean'], '.2f')} |",
        f"| request s median | {f(o['total_s_median'])} | {f(r['total_s_median'])} |", "",
        f"stream: TTFA {f(s['ttfa_plain_s'])} s plain vs {f(s['ttfa_verified_s'])} s verified; done event "
        f"{f(s['done_plain_s'])} s vs {f(s['done_verified_s'])} s", "",
    ]
