"""`editx serve`: one process, one Engine, API and UI on one port (uvicorn)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def serve(args, config) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        from editx.errors import EditxError

        raise EditxError("`editx serve` needs the server extra: pip install 'editx[server]'") from exc
    from editx.pipeline.engine import Engine
    from editx.server.app import create_app
    from editx.server.settings import ServerSettings
    from editx.server.voices_redis import make_voice_store

    settings = ServerSettings.from_env(data_dir=getattr(args, "data_dir", None))
    from editx.server.cluster import ClusterOptions, cluster_requested, serve_cluster

    if cluster_requested(args):  # Ray Serve; ray is imported only on this path

        return serve_cluster(config, settings, ClusterOptions.from_args(args), host=args.host, port=args.port)
    def load():
        from editx.verify.chain import preload

        engine = Engine.load(config)
        preload(engine)  # the verification models, when EDITX_VERIFY is on
        return engine

    app = create_app(loader=load, settings=settings,
                     store=make_voice_store(settings, config.redis_url))
    log.info("serving", extra={"host": args.host, "port": args.port, "backend": config.resolved_backend,
                               "auth": bool(settings.api_keys), "data_dir": str(settings.data_dir)})
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0
