"""Prometheus metrics for the engine and server; every object is a no-op without prometheus_client.

Each `Metrics` owns its own CollectorRegistry (never the process-global default), so tests and
several engines in one process do not collide. `get_metrics()` is the lazily built process-wide
instance the server's /metrics endpoint renders.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)
CACHE_TIERS = ("memory", "disk", "shared")
NOOP_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Noop:
    """Stands in for a metric (or a labelled child) when prometheus_client is absent or disabled."""

    def labels(self, *args: Any, **kwargs: Any) -> _Noop:
        return self

    def observe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def inc(self, *args: Any, **kwargs: Any) -> None:
        pass

    def dec(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set(self, *args: Any, **kwargs: Any) -> None:
        pass


class Metrics:
    """The editx metric set. `enabled=None` means: on when prometheus_client imports."""

    def __init__(self, *, enabled: bool | None = None, registry: Any = None) -> None:
        prom = None
        if enabled is not False:
            try:
                import prometheus_client as prom
            except ImportError:
                if enabled:
                    from editx.errors import ValidationError

                    raise ValidationError(
                        "metrics were requested but prometheus_client is not installed; "
                        "install it with: pip install 'editx[metrics]'"
                    ) from None
                prom = None
        self.enabled = prom is not None
        self._prom = prom
        if prom is None:
            self.registry = None
            noop = _Noop()
            self.stage_seconds = self.request_seconds = self.ttfa_seconds = self.rtf = noop
            self.requests_total = self.cache_lookups_total = noop
            self.queue_depth = self.in_flight = noop
            return
        self.registry = registry if registry is not None else prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_seconds = prom.Histogram(
            "editx_stage_seconds",
            "Duration of one pipeline stage",
            ["stage", "op", "backend"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.request_seconds = prom.Histogram(
            "editx_request_seconds",
            "End-to-end request time",
            ["op", "backend"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.ttfa_seconds = prom.Histogram(
            "editx_ttfa_seconds",
            "Time to first audio",
            ["op", "backend"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.rtf = prom.Histogram(
            "editx_rtf",
            "Real-time factor (processing seconds per audio second)",
            ["op", "backend"],
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.requests_total = prom.Counter(
            "editx_requests", "Requests settled, by operation, status and backend", ["op", "status", "backend"],
            registry=r
        )
        self.cache_lookups_total = prom.Counter(
            "editx_cache_lookups", "Prompt-cache lookups per tier", ["tier", "result"], registry=r
        )
        # set by the Engine itself whenever they change (admission, every worker loop)
        self.queue_depth = prom.Gauge("editx_queue_depth", "Requests waiting in the engine queue", registry=r)
        self.in_flight = prom.Gauge("editx_in_flight", "Requests taken by the engine's worker", registry=r)

    def observe_cache_outcome(self, outcome: str, tiers: Iterable[str] = CACHE_TIERS) -> None:
        """Count the per-tier lookups one `get_or_compute` outcome implies: every enabled tier before the
        one that answered missed; "miss" means every enabled tier missed. Pass `TieredCache.tiers`
        (only tiers that exist are counted). The Engine calls this once per prompt lookup."""
        for tier in tiers:
            if tier == outcome:
                self.cache_lookups_total.labels(tier=tier, result="hit").inc()
                return
            self.cache_lookups_total.labels(tier=tier, result="miss").inc()

    def observe_timeline(
        self,
        timeline: Mapping[str, Any],
        *,
        backend: str,
        status: str = "ok",
    ) -> None:
        """Feed one settled request's `Timeline.to_dict()` into the histograms and requests_total.
        Nested stages (with `parent`) and instant marks are not observed as stages. Cache lookups
        are not counted here: the Engine counts each one as it happens (observe_cache_outcome)."""
        op = str(timeline.get("op") or "unknown")
        for s in timeline.get("stages", ()):
            if s.get("instant") or s.get("parent") is not None:
                continue
            self.stage_seconds.labels(stage=s["name"], op=op, backend=backend).observe(s["duration_s"])
        if timeline.get("total_s") is not None:
            self.request_seconds.labels(op=op, backend=backend).observe(timeline["total_s"])
        if timeline.get("ttfa_s") is not None:
            self.ttfa_seconds.labels(op=op, backend=backend).observe(timeline["ttfa_s"])
        if timeline.get("rtf") is not None:
            self.rtf.labels(op=op, backend=backend).observe(timeline["rtf"])
        self.count_request(op, status, backend)

    def count_request(self, op: str, status: str, backend: str) -> None:
        """One settled request (also for a caller that refuses a request before the Engine sees it)."""
        self.requests_total.labels(op=op, status=status, backend=backend).inc()

    def render_latest(self) -> tuple[bytes, str]:
        """(body, content type) for a /metrics endpoint."""
        if self._prom is None:
            return b"# editx metrics disabled: pip install 'editx[metrics]'\n", NOOP_CONTENT_TYPE
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST


_default: Metrics | None = None
_default_lock = threading.Lock()


def get_metrics() -> Metrics:
    """The process-wide Metrics, built on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default


def observe_timeline(timeline: Mapping[str, Any], **kwargs: Any) -> None:
    """`get_metrics().observe_timeline(...)`."""
    get_metrics().observe_timeline(timeline, **kwargs)


def render_latest() -> tuple[bytes, str]:
    """`get_metrics().render_latest()`."""
    return get_metrics().render_latest()
