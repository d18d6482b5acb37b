"""Benchmark measurement: arms (an EngineConfig + a shared loaded backend), single runs, A/B pairs,
scaling sweeps, and the clean-process load probe. Everything returns plain JSON-able dicts.

An *arm* is one configuration under test. Arms whose weights are the same (backend, model dir,
device, dtype, quantization, ONNX threads) share one loaded backend object: each arm has its own
`Engine` (own queue and prompt cache) around it, and before every request the arm puts its config
and cache back on the backend, as the Engine's constructor does. Torch intra-op threads are
process-wide, so they are set per request too.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from editx.config import EngineConfig

log = logging.getLogger(__name__)

MIB = 2**20


# ---- process measurements -------------------------------------------------------------------------
def _status_kb(field_name: str) -> int | None:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in KiB (None off Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float:
    """Process high-water mark (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def _editx(backend):
    """The backend when it is the editx one (whose models the LM, GPU and file sections measure), else None."""
    from editx.pipeline.stepaudio import StepAudioBackend

    return backend if isinstance(backend, StepAudioBackend) else None


def _cuda_device(backend) -> torch.device | None:
    dev = b.device if (b := _editx(backend)) is not None else None
    return dev if isinstance(dev, torch.device) and dev.type == "cuda" else None


# ---- arms -------------------------------------------------------------------------------------------
def weight_key(config: EngineConfig) -> tuple:
    """Configs with equal keys can share one loaded backend."""
    backend = config.resolved_backend
    key = (backend, str(config.model_dir), config.device, config.dtype, config.quantize, config.onnx_threads,
           config.onnx_providers)
    return key + ((config.threads,) if backend == "lite" else ())  # lite sizes its ORT pools at load


@dataclass
class Arm:
    """One configuration under test and the Engine that serves it."""

    name: str
    config: EngineConfig
    overrides: dict[str, Any] = field(default_factory=dict)
    engine: Any = None
    warmup_s: float | None = None
    cache_dir: Path | None = None
    threads: int | None = None  # torch threads in force on the arm's worker thread


class ArmPool:
    """Loads each distinct backend once and builds one Engine per arm around it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.backends: dict[tuple, Any] = {}
        self.load_s: dict[tuple, float] = {}
        self.default_threads = torch.get_num_threads()
        self.arms: list[Arm] = []

    def add(self, name: str, config: EngineConfig, overrides: dict[str, Any] | None = None) -> Arm:
        from editx.pipeline.backends import load_backend, make_cache
        from editx.pipeline.engine import Engine

        key = weight_key(config)
        if key not in self.backends:
            self._set_threads(config)
            t0 = time.perf_counter()
            self.backends[key] = load_backend(config)
            self.load_s[key] = time.perf_counter() - t0
        arm_dir = Path(tempfile.mkdtemp(prefix=f"arm-{name}-", dir=self.workdir))
        config = config.with_(cache_dir=arm_dir)  # every arm starts cold: its own empty disk tier
        engine = Engine(config, self.backends[key], make_cache(config))
        engine.ready = True
        arm = Arm(name, config, dict(overrides or {}), engine, cache_dir=arm_dir)
        self.arms.append(arm)
        return arm

    def _set_threads(self, config: EngineConfig) -> int:
        n = config.threads or self.default_threads
        torch.set_num_threads(n)
        return n

    def activate(self, arm: Arm) -> None:
        """Put the arm's config, cache and threads in force on its (possibly shared) backend."""
        backend = arm.engine.backend
        backend.config = arm.config
        backend.cache = arm.engine.cache
        n = self._set_threads(arm.config)
        # torch's intra-op thread count is per calling thread: set it where the models run too
        arm.threads = arm.engine._call(lambda: (torch.set_num_threads(n), torch.get_num_threads())[1])
        if arm.warmup_s is None:
            if arm.config.warmup:
                arm.warmup_s = arm.engine.warmup()["warmup_s"]
            else:
                arm.warmup_s = 0.0

    def close(self) -> None:
        for arm in self.arms:
            arm.engine.close()
        for backend in self.backends.values():
            backend.cache = None
        torch.set_num_threads(self.default_threads)


# ---- one request ------------------------------------------------------------------------------------
def _top_stages(timeline: dict) -> tuple[dict[str, float], dict[str, float]]:
    """Durations summed by name: top-level stages (sequential within a request) and nested ones."""
    top: dict[str, float] = {}
    nested: dict[str, float] = {}
    for s in timeline.get("stages", ()):
        if s.get("instant"):
            continue
        into = nested if s.get("parent") else top
        into[s["name"]] = into.get(s["name"], 0.0) + float(s["duration_s"])
    return top, nested


def run_record(result, *, wall_s: float, ttfa_s: float | None, backend=None) -> dict[str, Any]:
    """The JSON record of one finished request."""
    tl = result.timeline
    top, nested = _top_stages(tl)
    lm_s = sum(v for k, v in top.items() if k.startswith("lm_"))
    tokens = int(result.lm_tokens or 0)
    cache = dict(tl.get("cache") or {})
    prompt_stage = top.get("prompt_encode", top.get("voice_match"))
    rec = {
        "wall_s": wall_s, "total_s": float(tl["total_s"]), "stages": top, "substages": nested,
        "cache": cache, "prompt_cache": cache.get("prompt", "off"), "prompt_s": prompt_stage,
        "lm_tokens": tokens, "rounds": len(result.iterations), "lm_s": lm_s if lm_s > 0 else None,
        "lm_tok_s": tokens / lm_s if lm_s > 0 and tokens else None,
        "audio_s": result.duration_s, "rtf": float(tl["total_s"]) / result.duration_s if result.duration_s else None,
        "ttfa_s": ttfa_s, "ttfa_timeline_s": tl.get("ttfa_s"),
        "rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": None,
        "timeline": tl,
    }
    if backend is not None and (dev := _cuda_device(backend)) is not None:
        rec["gpu_peak_mb"] = torch.cuda.max_memory_allocated(dev) / MIB
    return rec


def measure(pool: ArmPool, arm: Arm, request, *, stream: bool = False, quality=None,
            reference=None) -> dict[str, Any]:
    """Run one request through the arm's Engine and return its record. Offline (default): stages are
    sequential, so they sum to at most the total. `stream=True` takes the streaming path (flow and
    vocoder chunks then overlap the LM decode) and records the time to first audio as the moment
    the first chunk reaches the caller."""
    pool.activate(arm)
    backend = arm.engine.backend
    if (dev := _cuda_device(backend)) is not None:
        torch.cuda.reset_peak_memory_stats(dev)
    first: list[float] = []
    t0 = time.perf_counter()

    def on_chunk(_chunk) -> None:
        if not first:
            first.append(time.perf_counter() - t0)

    result = arm.engine.submit(request, emit=on_chunk if stream else None).result()
    wall = time.perf_counter() - t0
    rec = run_record(result, wall_s=wall, ttfa_s=first[0] if first else None, backend=backend)
    rec.update(arm=arm.name, streamed=stream, threads=arm.threads)
    if not stream:  # offline stages run one after another: each one's FLOPs over its own time
        rec["gflop"] = _stage_flops(backend).request(result.timeline)
    if quality is not None:
        rec["quality"] = score_quality(quality, result, *reference)
    return rec


_FLOPS: dict[int, Any] = {}


def _stage_flops(backend):
    """One StageFlops per loaded backend (it counts the vocoder's FLOPs per frame once)."""
    from editx.bench_compute import StageFlops

    if id(backend) not in _FLOPS:
        _FLOPS[id(backend)] = StageFlops(backend)
    return _FLOPS[id(backend)]


def score_quality(oracle, result, text: str, prompt_samples: np.ndarray, prompt_sr: int) -> dict[str, Any]:
    """WER of the output against the text it should say; speaker similarity to the prompt."""
    out: dict[str, Any] = {"wer": None, "speaker_similarity": None, "transcript": None, "error": None}
    try:
        out["transcript"] = oracle.transcribe(result.audio, result.sample_rate)
        from editx.quality import word_error_rate

        out["wer"] = word_error_rate(text, out["transcript"])
        out["speaker_similarity"] = float(oracle.speaker_similarity(prompt_samples, prompt_sr, result.audio,
                                                                     result.sample_rate))
    except Exception as exc:  # noqa: BLE001 - a failed oracle is reported, never fatal for the run
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def run_series(pool: ArmPool, arm: Arm, make_request, n: int, *, cold: bool = True, **kw) -> list[dict[str, Any]]:
    """n requests in a row on one arm; the first is the cold run (unless `cold=False`)."""
    runs = []
    for i in range(n):
        rec = measure(pool, arm, make_request(i), **kw)
        rec.update(index=i, cold=cold and i == 0)
        runs.append(rec)
        log.info("bench run", extra={"arm": arm.name, "index": i, "total_s": round(rec["total_s"], 3)})
    return runs


def ab_order(pairs: int) -> list[str]:
    """A B A B ...: each pair runs A first, so neither arm always follows the other's warm caches."""
    return [x for _ in range(pairs) for x in ("a", "b")]


def run_ab(pool: ArmPool, arm_a: Arm, arm_b: Arm, make_request, pairs: int, **kw) -> dict[str, Any]:
    """Alternate the arms pair by pair; ratio = A's total / B's total (how many times faster B is)."""
    runs: dict[str, list] = {"a": [], "b": []}
    order = ab_order(pairs)
    for i, which in enumerate(order):
        arm = arm_a if which == "a" else arm_b
        rec = measure(pool, arm, make_request(i // 2), **kw)
        rec.update(index=len(runs[which]), cold=not runs[which])
        runs[which].append(rec)
    pair_list = [{"index": i, "cold": i == 0, "a_total_s": a["total_s"], "b_total_s": b["total_s"],
                  "ratio": a["total_s"] / b["total_s"] if b["total_s"] > 0 else None}
                 for i, (a, b) in enumerate(zip(runs["a"], runs["b"]))]
    return {"a": arm_a.name, "b": arm_b.name, "order": order, "runs_a": runs["a"], "runs_b": runs["b"],
            "pairs": pair_list}


# ---- sweeps -----------------------------------------------------------------------------------------
def run_concurrent(pool: ArmPool, arm: Arm, requests: list) -> dict[str, Any]:
    """Submit all requests at once (the worker batches them) and wait for all; throughput and latency."""
    pool.activate(arm)
    t0 = time.perf_counter()
    futures = [arm.engine.submit(r) for r in requests]
    results = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    latencies = [float(r.timeline["total_s"]) for r in results]
    audio = sum(r.duration_s for r in results)
    return {"requests": len(requests), "wall_s": wall, "audio_s": audio, "throughput": audio / wall,
            "latencies_s": latencies, "lm_tokens": sum(int(r.lm_tokens or 0) for r in results)}


def sweep(pool: ArmPool, arm: Arm, points: list[tuple[Any, list]], rounds: int = 1) -> list[dict[str, Any]]:
    """Each point: `rounds` waves of its requests submitted together. Returns one entry per point."""
    out = []
    for value, requests in points:
        waves = [run_concurrent(pool, arm, requests) for _ in range(rounds)]
        lat = [x for w in waves for x in w["latencies_s"]]
        wall = sum(w["wall_s"] for w in waves)
        audio = sum(w["audio_s"] for w in waves)
        out.append({"value": value, "requests": sum(w["requests"] for w in waves), "wall_s": wall,
                    "audio_s": audio, "throughput": audio / wall if wall > 0 else None,
                    "latency_p50_s": float(np.percentile(lat, 50)), "latency_p90_s": float(np.percentile(lat, 90)),
                    "latencies_s": lat, "lm_tokens": sum(w["lm_tokens"] for w in waves)})
        log.info("sweep point", extra={"value": value, "throughput": round(out[-1]["throughput"] or 0, 3)})
    return out


# ---- LM throughput ----------------------------------------------------------------------------------
def lm_section(backend, *, prompt_len: int, new_tokens: int, batch: int) -> dict[str, Any] | None:
    """Our decode loop vs the HF-generate-style loop on the loaded LM, and the bandwidth bound."""
    if _editx(backend) is None:
        return None
    lm = backend.lm
    from editx.lm.throughput import compare

    return compare(lm, prompt_len=prompt_len, new_tokens=new_tokens, batch=batch)


# ---- clean-process load probe -------------------------------------------------------------------------
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin", ".onnx", ".npy", ".pth")


def weight_files_bytes(model_dir: Path | None) -> int | None:
    if model_dir is None or not Path(model_dir).is_dir():
        return None
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())


def loaded_weight_bytes(backend) -> int:
    """Bytes of every torch parameter/buffer the backend holds (deduplicated), found by walking its
    attributes a few levels deep, plus the ONNX files its sessions hold in memory."""
    seen: set[int] = set()
    total = 0

    def visit(obj, depth: int) -> None:
        nonlocal total
        if id(obj) in seen or depth > 4 or isinstance(obj, (str, bytes, int, float, Path, np.ndarray)):
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
            return
        if isinstance(obj, dict):
            children = obj.values()
        elif isinstance(obj, (list, tuple)):
            children = obj
        else:
            children = getattr(obj, "__dict__", {}).values()
        for child in children:
            visit(child, depth + 1)

    visit(backend, 0)
    if _editx(backend) is not None:
        total += sum(p.stat().st_size for p in Path(backend.paths.root).rglob("*.onnx"))
    return total


def probe_load_main() -> None:
    """Subprocess entry: load the backend named by argv[1] (JSON EngineConfig fields) and print the
    RSS numbers as JSON on stdout."""
    import json

    from editx.pipeline.backends import load_backend  # the imports' memory is not the load's

    fields = json.loads(sys.argv[1])
    config = EngineConfig(**fields)
    if config.threads:
        torch.set_num_threads(config.threads)
    before = rss_mb()
    t0 = time.perf_counter()
    backend = load_backend(config)
    load_s = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM")
    out = {"rss_before_mb": before, "peak_rss_mb": None if peak_kb is None else peak_kb / 1024,
           "rss_after_mb": rss_mb(), "load_s": load_s, "loaded_weight_bytes": loaded_weight_bytes(backend)}
    sys.stdout.write(json.dumps(out) + "\n")


def probe_load(config: EngineConfig, timeout_s: float = 900) -> dict[str, Any]:
    """Load the backend in a fresh interpreter so its RSS peak is the load's alone."""
    import json

    fields = {"model_dir": str(config.model_dir) if config.model_dir else None, "backend": config.backend,
              "device": config.device, "dtype": config.dtype, "quantize": config.quantize,
              "threads": config.threads, "onnx_threads": config.onnx_threads, "warmup": False}
    code = "from editx.bench_runs import probe_load_main; probe_load_main()"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(fields)], capture_output=True, text=True,
                          timeout=timeout_s, env=env, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-2000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    files = weight_files_bytes(config.model_dir)
    delta = (out["peak_rss_mb"] or 0) - (out["rss_before_mb"] or 0)
    out.update(weight_file_bytes=files, load_delta_mb=delta,
               ratio_to_loaded=delta * MIB / out["loaded_weight_bytes"] if out["loaded_weight_bytes"] else None,
               ratio_to_files=delta * MIB / files if files else None)
    return out


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
