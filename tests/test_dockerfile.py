"""Deployment artifacts, checked without a Docker engine: both Dockerfiles parsed, the KubeRay manifest loaded."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, f"{path.name} ends inside a continued line"
    return out


def args_of(ins, name: str) -> list[str]:
    return [a for n, a in ins if n == name]


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request):
    return request.param, instructions(ROOT / request.param)


def test_base_image_pinned(dockerfile):
    name, ins = dockerfile
    froms = args_of(ins, "FROM")
    assert froms, name
    for image in froms:
        ref = image.split()[0]
        assert "@sha256:" in ref or re.search(r":\d+\.\d+\.\d+[\w.-]*$", ref), f"{name}: {ref} is not pinned"
        assert not ref.endswith(":latest")
    expected = "python:3.11" if name == "Dockerfile" else "nvidia/cuda:"
    assert froms[0].startswith(expected)


def test_runs_as_non_root(dockerfile):
    name, ins = dockerfile
    users = args_of(ins, "USER")
    assert users and users[-1] not in ("root", "0"), f"{name}: the final USER must not be root"
    # the user is created in the image, and the last RUN comes before the switch (nothing runs as root after)
    assert any("useradd" in a and users[-1] in a for a in args_of(ins, "RUN"))
    last_user = max(i for i, (n, _) in enumerate(ins) if n == "USER")
    assert all(n != "RUN" for n, _ in ins[last_user:])


def test_serves_on_all_interfaces_with_healthcheck(dockerfile):
    name, ins = dockerfile
    cmd = json.loads(args_of(ins, "CMD")[-1])  # exec form: signals reach editx directly
    assert cmd[:2] == ["editx", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1]
    assert port in args_of(ins, "EXPOSE")[-1].split()
    health = args_of(ins, "HEALTHCHECK")[-1]
    assert "/healthz" in health and f":{port}/" in health and "--interval" in health and "--timeout" in health
    assert not args_of(ins, "ENTRYPOINT")


def test_installs_pinned_torch_before_editx_with_its_extras(dockerfile):
    name, ins = dockerfile
    runs = args_of(ins, "RUN")
    text = " ".join(runs)
    torch_at = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    editx_at = next(i for i, r in enumerate(runs) if 'pip install ".[${EXTRAS}' in r)
    assert torch_at < editx_at, "torch must come first so the package's torch range is already met"
    args = dict(a.split("=", 1) for a in args_of(ins, "ARG") if "=" in a)
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/")
    assert args["TORCH_INDEX"].endswith("/cpu" if name == "Dockerfile" else "/cu128")
    assert set(args["EXTRAS"].split(",")) >= {"server", "redis", "metrics", "lite"}
    assert "--no-install-recommends" in text or "apt-get install" not in text
    assert "rm -rf /var/lib/apt/lists" in text or "apt-get" not in text


def test_no_piped_installers_and_copies_exist(dockerfile):
    name, ins = dockerfile
    for run in args_of(ins, "RUN"):
        assert not re.search(r"(curl|wget)[^|;&]*\|\s*(ba|z)?sh", run), f"{name}: piped installer in {run!r}"
    for copy in args_of(ins, "COPY") + args_of(ins, "ADD"):
        srcs = shlex.split(copy)[:-1]
        assert not any(s.startswith(("http://", "https://")) for s in srcs)
        for src in srcs:
            if not src.startswith("--"):
                assert (ROOT / src).exists(), f"{name}: COPY source {src} is missing"
    assert not args_of(ins, "ADD"), "use COPY (ADD fetches URLs and unpacks archives)"


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_kuberay_rayservice_manifest():
    doc = yaml.safe_load((ROOT / "docs" / "kuberay-rayservice.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    app = serve_cfg["applications"][0]
    module, _, attr = app["import_path"].partition(":")
    import importlib

    from editx.server.cluster import ClusterOptions

    assert callable(getattr(importlib.import_module(module), attr))
    options = ClusterOptions.from_mapping(app["args"])  # every arg is a real option, with valid values
    assert options.autoscaling and options.replica_gpus == 1
    names = {d["name"] for d in app.get("deployments", [])}
    assert names <= {"EngineReplica", "Ingress"}
    cluster = doc["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        for c in pod["spec"]["containers"]:
            env = {e["name"] for e in c["env"]}
            assert {"EDITX_MODEL_DIR", "EDITX_REDIS_URL"} <= env  # shared cache + registry on every node
            assert not c["image"].endswith(":latest")
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == options.replica_gpus
    assert cluster["rayVersion"].startswith("2.")


def test_serve_config_builds_the_application(monkeypatch, tmp_path):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    from editx.server.cluster import app_from_args

    monkeypatch.setenv("EDITX_MODEL_DIR", str(tmp_path))
    doc = yaml.safe_load((ROOT / "docs" / "kuberay-rayservice.yaml").read_text())
    args = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]["args"]
    app = app_from_args(args)  # binds deployments only: nothing starts, nothing loads
    assert type(app).__name__ == "Application"
