"""Prometheus counters of output verification, registered beside the engine's metrics on first use.

editx_verify_checks_total{result=pass|fail}: outputs scored; editx_verify_retries_total: attempts
regenerated after a failed check; editx_verify_unverified_total: results returned unverified;
editx_verify_transcriptions_total: input clips transcribed because no transcript was given; the
check's own time is the `verify` stage of editx_stage_seconds.
"""

from __future__ import annotations

import threading
from typing import Any

from editx.telemetry.metrics import get_metrics

_lock = threading.Lock()
_sets: dict[int, dict[str, Any]] = {}


def _counters() -> dict[str, Any] | None:
    metrics = get_metrics()
    if not metrics.enabled:
        return None
    with _lock:
        key = id(metrics.registry)
        if key not in _sets:
            import prometheus_client as prom

            r = metrics.registry
            _sets[key] = {
                "checks": prom.Counter("editx_verify_checks", "Outputs scored by the verifier",
                                       ["op", "backend", "result"], registry=r),
                "retries": prom.Counter("editx_verify_retries", "Regenerations after a failed check",
                                        ["op", "backend"], registry=r),
                "unverified": prom.Counter("editx_verify_unverified", "Results returned without passing",
                                           ["op", "backend"], registry=r),
                "transcriptions": prom.Counter("editx_verify_transcriptions",
                                               "Input clips transcribed for a missing transcript", registry=r),
            }
        return _sets[key]


def count_check(passed: bool, backend: str, op: str, seconds: float) -> None:
    c = _counters()
    if c is None:
        return
    c["checks"].labels(op=op, backend=backend, result="pass" if passed else "fail").inc()
    get_metrics().stage_seconds.labels(stage="verify", op=op, backend=backend).observe(seconds)


def count_retry(backend: str, op: str) -> None:
    if (c := _counters()) is not None:
        c["retries"].labels(op=op, backend=backend).inc()


def count_unverified(backend: str, op: str) -> None:
    if (c := _counters()) is not None:
        c["unverified"].labels(op=op, backend=backend).inc()


def count_transcription() -> None:
    if (c := _counters()) is not None:
        c["transcriptions"].inc()
