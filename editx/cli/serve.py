"""`editx serve`: the HTTP API and web UI in one process, or on Ray Serve with the cluster flags."""

from __future__ import annotations

import argparse
import sys

from editx.cli.engine_args import add_data_dir, add_engine_args, engine_config


def add_serve(sub) -> None:
    s = sub.add_parser("serve", help="HTTP API + web UI")
    add_engine_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)
    add_data_dir(s)
    rs = s.add_argument_group("cluster (Ray Serve; needs the cluster extra; without these one process serves)")
    rs.add_argument("--replicas", type=int, default=None, help="engine replicas, each with its own model")
    rs.add_argument("--ray-address", default=None, help="join this Ray cluster (env RAY_ADDRESS); default: local")
    rs.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of a local Ray instance (default: all)")
    rs.add_argument("--min-replicas", type=int, default=None, help="autoscaling lower bound (with --max-replicas)")
    rs.add_argument("--max-replicas", type=int, default=None, help="autoscaling upper bound (turns autoscaling on)")
    rs.add_argument("--target-ongoing-requests", type=float, default=None, help="autoscaling target per replica")
    rs.add_argument("--replica-cpus", type=float, default=None, help="CPUs reserved per replica (default 1)")
    rs.add_argument("--replica-gpus", type=float, default=None, help="GPU share per replica (default 0)")
    rs.add_argument("--max-ongoing-requests", type=int, default=None, help="requests one replica runs at once")
    rs.add_argument("--max-queued-requests", type=int, default=None,
                    help="requests waiting for a replica before the server answers 429")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from editx.server.run import serve

    config = engine_config(args)
    if config.resolved_backend == "editx" and config.model_dir is not None:
        from editx.doctor import check  # refuse to start on a folder that will not load, with doctor's lines

        report = check(config.model_dir)
        if not report.ok:
            print("\n".join(report.lines()), file=sys.stderr)
            return 1
    return serve(args, config)
