"""`editx serve --replicas N`: the same FastAPI app on Ray Serve, an ingress in front of N engine replicas.

Each `EngineReplica` (editx/server/cluster_replica.py) loads the Engine once and warms it up in its
constructor, so Ray only routes to it (and only marks it healthy) once it can serve; its health check
is "the engine is ready". It runs the ordinary `create_app` app in-process: requests reach it as plain
data and it answers with the app's own status, headers and body chunks, adding `X-Editx-Replica`. What replicas share lives in
Redis: the prompt cache's shared tier (`EngineConfig.redis_url`) and the voice registry
(`make_voice_store`). Everything else (weights, KV caches, the memory/disk cache tiers) is per replica.

The `Ingress` deployment holds no model. It forwards each request through a Serve handle (Serve picks
the least-loaded of two replicas), turns Serve's back-pressure into 429 + Retry-After when every
replica's queue is full, retries once on another replica when the chosen one died before answering
(for requests that are safe to repeat), and otherwise answers 503 + Retry-After; it never waits on a
dead replica. Ray restarts dead replicas by itself (the Serve controller keeps the target count).

This module imports ray only inside functions: `editx serve` without `--replicas` never loads it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

APP_NAME = "editx"
REPLICA_HEADER = "x-editx-replica"
RETRIED_HEADER = "x-editx-retried"
# Requests whose repetition has no effect beyond the answer (a seeded synthesis gives the same audio
# again; the prompt cache is content-addressed), so a replica dying under them can be retried once.
RETRY_SAFE_PATHS = ("/v1/audio/speech", "/v1/audio/edits")


@dataclass(frozen=True)
class ClusterOptions:
    """How the engine deployment is scaled and placed; every field is logged at start."""

    replicas: int = 1
    min_replicas: int | None = None  # with max_replicas: autoscaling instead of a fixed count
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0  # autoscaling target per replica
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    max_ongoing_requests: int = 8  # sent to one replica at once (its engine batches them)
    max_queued_requests: int = 64  # waiting in the ingress for a replica; beyond: 429
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray instance
    ray_num_cpus: int | None = None  # local Ray only; None: every core
    ingress_replicas: int = 1
    retries: int = 1  # on a dead replica, for RETRY_SAFE_PATHS and GET/HEAD
    retry_after_s: int = 2
    request_timeout_s: float | None = None  # end-to-end limit at the HTTP proxy
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        from editx.errors import ValidationError

        if self.replicas < 1:
            raise ValidationError(f"--replicas must be >= 1, got {self.replicas}")
        if self.min_replicas is not None and self.max_replicas is None:
            raise ValidationError("--min-replicas needs --max-replicas (autoscaling bounds come in pairs)")
        if self.autoscaling and not (0 <= (self.min_replicas or 0) <= self.max_replicas and self.max_replicas >= 1):
            raise ValidationError(f"autoscaling bounds must satisfy 0 <= min <= max, max >= 1; got "
                                  f"min={self.min_replicas} max={self.max_replicas}")
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise ValidationError("--replica-cpus and --replica-gpus must be >= 0")
        if self.max_ongoing_requests < 1 or self.max_queued_requests < 1 or self.target_ongoing_requests <= 0:
            raise ValidationError("--max-ongoing-requests, --max-queued-requests and --target-ongoing-requests "
                                  "must be positive")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    @classmethod
    def from_args(cls, args) -> ClusterOptions:
        """From the `editx serve` flags (None means the default)."""
        names = ("replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "replica_cpus",
                 "replica_gpus", "max_ongoing_requests", "max_queued_requests", "ray_address", "ray_num_cpus")
        given = {n: getattr(args, n, None) for n in names}
        return cls(**{k: v for k, v in given.items() if v is not None})

    @classmethod
    def from_mapping(cls, args: dict | None) -> ClusterOptions:
        """From a Serve config's `args` (typed YAML) or `serve run ... key=value` (strings)."""
        from dataclasses import fields

        from editx.errors import ValidationError

        known = {f.name: f.type for f in fields(cls)}
        out = {}
        for key, value in (args or {}).items():
            if key not in known:
                raise ValidationError(f"unknown cluster option {key!r}; known: {', '.join(sorted(known))}")
            kind = known[key].split(" | ")[0]
            try:
                out[key] = value if value is None or kind == "str" else {"int": int, "float": float}[kind](value)
            except (TypeError, ValueError):
                raise ValidationError(f"cluster option {key}={value!r} is not a valid {kind}") from None
        return cls(**out)

    def engine_deployment_options(self) -> dict:
        """Keyword arguments of `serve.deployment` for the engine replicas."""
        opts: dict = {
            "ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
        }
        if self.autoscaling:
            opts["autoscaling_config"] = {"min_replicas": self.min_replicas or 0, "max_replicas": self.max_replicas,
                                          "initial_replicas": max(self.min_replicas or 0, 1),
                                          "target_ongoing_requests": self.target_ongoing_requests}
        else:
            opts["num_replicas"] = self.replicas
        return opts

    def describe(self) -> dict:
        d = asdict(self)
        if d["ray_address"]:
            d["ray_address"] = d["ray_address"].rpartition("@")[2]  # no credentials in logs
        return d


def cluster_requested(args) -> bool:
    """`editx serve` runs on Ray Serve when a replica count or autoscaling bound was given."""
    return bool(getattr(args, "replicas", None) or getattr(args, "max_replicas", None))


# ---- the ingress -------------------------------------------------------------------------------
def _json_error(status: int, message: str, code: str, retry_after: int | None = None):
    from starlette.responses import JSONResponse

    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": {"message": message, "type": code, "code": status}}, status_code=status,
                        headers=headers)


class Ingress:
    """Forwards every request to an engine replica; back-pressure → 429, dead replica → retry or 503."""

    def __init__(self, engine_handle, max_request_bytes: int, options: ClusterOptions) -> None:
        self.engine = engine_handle
        self.max_bytes = max_request_bytes
        self.options = options

    async def __call__(self, request):
        from ray.exceptions import RayActorError, RayError
        from ray.serve.exceptions import (
            BackPressureError,
            DeploymentUnavailableError,
            RayServeException,
            ReplicaUnavailableError,
        )
        from starlette.responses import StreamingResponse

        body = await self._read_body(request)
        if body is None:
            return _json_error(413, f"request body is over the {self.max_bytes} byte limit", "too_large")
        req = {"method": request.method, "path": request.url.path, "query": request.url.query.encode("latin-1"),
               "headers": [(k, v) for k, v in request.headers.raw], "body": body,
               "client": (request.client.host, request.client.port) if request.client else ("", 0)}
        safe = request.method in ("GET", "HEAD") or request.url.path in RETRY_SAFE_PATHS
        attempts = 1 + (self.options.retries if safe else 0)
        retry_after = self.options.retry_after_s
        for attempt in range(attempts):
            gen = self.engine.options(stream=True).handle.remote(req)
            try:
                start = await gen.__anext__()
            except BackPressureError:
                return _json_error(429, "every replica's queue is full; retry later", "queue_full", retry_after)
            except StopAsyncIteration:
                return _json_error(502, "the replica closed the request without an answer", "bad_gateway",
                                   retry_after)
            except (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError) as exc:
                log.warning("replica lost a request", extra={"path": req["path"], "attempt": attempt + 1,
                                                             "error": type(exc).__name__})
                if attempt + 1 < attempts:
                    continue
                return _json_error(503, "the replica serving this request stopped (it is being restarted); "
                                        "retry shortly", "replica_unavailable", retry_after)
            except (RayServeException, RayError) as exc:  # Ray could not run it (not the app's answer): retry
                log.warning("the cluster could not run a request", exc_info=True, extra={"path": req["path"]})
                return _json_error(503, f"the cluster could not run this request ({type(exc).__name__}); retry "
                                        "shortly", "cluster_unavailable", retry_after)
            headers = dict(start["headers"])
            if attempt:
                headers[RETRIED_HEADER] = str(attempt)
            return StreamingResponse(_rest(gen), status_code=start["status"], headers=headers)
        raise AssertionError("unreachable")  # the loop always returns

    async def _read_body(self, request) -> bytes | None:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return None
        parts, seen = [], 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > self.max_bytes:
                return None
            parts.append(chunk)
        return b"".join(parts)


async def _rest(gen):
    async for chunk in gen:
        yield chunk


# ---- building and running ----------------------------------------------------------------------
def build_app(config, settings, options: ClusterOptions):
    """The bound Serve application: Ingress → EngineReplica × N (nothing is started here)."""
    from ray import serve

    from editx.server.cluster_replica import EngineReplica, code_fingerprint

    engine = serve.deployment(EngineReplica, name="EngineReplica", **options.engine_deployment_options())
    ingress = serve.deployment(Ingress, name="Ingress", num_replicas=options.ingress_replicas,
                               ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
    return ingress.bind(engine.bind(config, settings, code_fingerprint()), settings.max_request_bytes, options)


def app_from_args(args: dict):
    """Serve application builder for a Serve config file or a KubeRay RayService (`import_path:
    editx.server.cluster:app_from_args`): engine and server settings come from the EDITX_* environment
    of the Ray nodes, `args` holds ClusterOptions fields (e.g. {"replicas": 2, "replica_gpus": 1})."""
    from editx.config import EngineConfig
    from editx.server.settings import ServerSettings

    return build_app(EngineConfig.from_env(), ServerSettings.from_env(), ClusterOptions.from_mapping(args))


# Ray Serve's controller kills an HTTP proxy that does not answer its first readiness check within
# 5 s (later health checks: 10 s); on a busy host (replicas loading a model on every core) the proxy
# misses that and `serve.start` fails. The proxy gets the replicas' health-check timeout instead.
# The controller reads these from its environment: a local Ray instance inherits this process's; a
# remote cluster needs them set on its nodes (docs/DEPLOYMENT.md).
PROXY_TIMEOUT_ENV = ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S")
# Ray gives a new node's raylet a fixed 30 s to register, which a busy host can miss; starting again
# usually makes it. Attempts stop after this long.
LOCAL_START_LIMIT_S = 300.0


# Ray starts its workers (our replicas) at nice 15: beside any other busy process on the host they
# get a few percent of a core and time out. A local instance serves editx alone, so they run at 0.
LOCAL_RAY_SYSTEM_CONFIG = {"worker_niceness": 0}


def start_ray(options: ClusterOptions, *, log_to_driver: bool = True, start_limit_s: float = LOCAL_START_LIMIT_S) -> str:
    """Join the cluster at --ray-address/RAY_ADDRESS, or start a local Ray instance; returns which."""
    import ray

    address = options.ray_address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return "existing"
    if address:
        ray.init(address=address)
        return address.rpartition("@")[2]
    for name in PROXY_TIMEOUT_ENV:  # an explicit setting wins
        os.environ.setdefault(name, str(options.health_check_timeout_s))
    deadline = time.monotonic() + start_limit_s
    while True:
        try:
            ray.init(num_cpus=options.ray_num_cpus or os.cpu_count(), include_dashboard=False,
                     log_to_driver=log_to_driver, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
            return "local"
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this one
            ray.shutdown()
            if "timed out during startup" not in str(exc) or time.monotonic() > deadline:
                raise
            log.warning("local Ray did not start in time; starting it again", extra={"error": str(exc)[:200]})


def deploy(config, settings, options: ClusterOptions, *, host: str, port: int, name: str = APP_NAME) -> None:
    """Start Serve's HTTP proxy on host:port and deploy; returns once every replica is warm."""
    from ray import serve

    http = {"host": host, "port": port}
    if options.request_timeout_s:
        http["request_timeout_s"] = options.request_timeout_s
    serve.start(http_options=http)
    t0 = time.perf_counter()
    serve.run(build_app(config, settings, options), name=name, route_prefix="/", blocking=False)
    log.info("cluster ready", extra={"deploy_s": round(time.perf_counter() - t0, 3), "app": name})


def serve_cluster(config, settings, options: ClusterOptions, *, host: str, port: int) -> int:
    """`editx serve --replicas N`: run until interrupted, then tear the application down."""
    try:
        import ray  # noqa: F401
        from ray import serve
    except ImportError as exc:
        from editx.errors import EditxError

        raise EditxError("`editx serve --replicas` needs the cluster extra: pip install 'editx[cluster]'") from exc
    where = start_ray(options)
    log.info("cluster starting", extra={"ray": where, "host": host, "port": port, "backend": config.resolved_backend,
                                        "redis": bool(config.redis_url), **options.describe()})
    if not config.redis_url:
        log.warning("no EDITX_REDIS_URL: replicas share no prompt cache, and the voice registry is the SQLite "
                    "one under the data dir (one host only); set --redis-url for a multi-host cluster")
    deploy(config, settings, options, host=host, port=port)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("cluster stopping")
    finally:
        serve.shutdown()
    return 0
