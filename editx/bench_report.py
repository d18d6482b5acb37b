"""Benchmark report: summary statistics, the issue's targets (pass/miss with the measured ratio), and
the writers (versioned JSON, a Markdown table, a PNG chart via matplotlib's Agg canvas).

JSON schema `editx.bench` version 1 (keys only ever added within a version):
  schema, schema_version, created, machine{cpu, cores, torch, threads, device, python, platform, gpu},
  config{...the bench arguments and base EngineConfig},
  series[{arm, op, overrides, warmup_s, runs[run], summary, in_ab?}],
  ab[{op, a, b, order, pairs[{index, cold, a_total_s, b_total_s, ratio}], runs_a, runs_b,
      summary_a, summary_b, ratio_median_warm, ratio_cold}],
  stream{arm, op, runs[run], summary} | null   (warm streamed runs: ttfa_s; their stages overlap),
  stream_texts[{arm, main, seconds, chars, segments, runs, ttfa_s, stream_total_s, offline_total_s, audio_s,
      ttfa_fraction, first_stages{stage: s before the first audio}, streamed_runs[run], offline_runs[run]}],
  sweeps{name: [{value, requests, wall_s, audio_s, throughput, latency_p50_s, latency_p90_s, ...}]},
  lm{...editx.lm.throughput.compare()} | null, load{...} | null, targets[{name, goal, measured, threshold,
  status: pass|miss|n/a, note}].
A run: {index, cold, arm, op, streamed, threads, wall_s, total_s, stages{top-level name: s}, substages, cache, prompt_cache,
  prompt_s, lm_tokens, rounds, lm_s, lm_tok_s, audio_s, rtf, ttfa_s, ttfa_timeline_s, rss_mb, peak_rss_mb,
  gpu_peak_mb, quality?{wer, speaker_similarity, transcript, error}, timeline}.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCHEMA = "editx.bench"
SCHEMA_VERSION = 1
HITS = ("memory", "disk", "shared")
RUN_METRICS = ("total_s", "wall_s", "prompt_s", "lm_s", "lm_tok_s", "audio_s", "rtf", "ttfa_s", "peak_rss_mb",
               "gpu_peak_mb")


def stats(values) -> dict[str, Any] | None:
    """median / p90 / min / max / n of the non-None values (None when there are none)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    return {"median": float(np.median(xs)), "p90": float(np.percentile(xs, 90)), "min": min(xs), "max": max(xs),
            "n": len(xs)}


def summarize(runs: list[dict]) -> dict[str, Any]:
    """Cold run values, warm-run statistics per metric and per stage, cache counts."""
    warm = [r for r in runs if not r["cold"]]
    cold = next((r for r in runs if r["cold"]), None)
    stage_names = list(dict.fromkeys(k for r in runs for k in r["stages"]))
    out: dict[str, Any] = {
        "runs": len(runs), "warm_runs": len(warm),
        "prompt_cache_hits": sum(r["prompt_cache"] in HITS for r in runs),
        "prompt_cache_misses": sum(r["prompt_cache"] == "miss" for r in runs),
        "cold": None if cold is None else {k: cold.get(k) for k in RUN_METRICS} | {"stages": dict(cold["stages"])},
        "warm": {k: stats(r.get(k) for r in warm) for k in RUN_METRICS},
        "warm_stages": {s: stats(r["stages"].get(s) for r in warm) for s in stage_names},
    }
    q = [r["quality"] for r in runs if r.get("quality")]
    if q:
        out["quality"] = {"wer": stats(x["wer"] for x in q), "speaker_similarity":
                          stats(x["speaker_similarity"] for x in q), "errors": sum(bool(x["error"]) for x in q)}
    return out


def finish_ab(ab: dict) -> dict:
    ab["summary_a"], ab["summary_b"] = summarize(ab["runs_a"]), summarize(ab["runs_b"])
    warm = [p["ratio"] for p in ab["pairs"] if not p["cold"] and p["ratio"] is not None]
    ab["ratio_median_warm"] = float(np.median(warm)) if warm else None
    ab["ratio_cold"] = ab["pairs"][0]["ratio"] if ab["pairs"] else None
    return ab


# ---- targets ------------------------------------------------------------------------------------------
def _target(name, goal, measured, threshold, passed, note="") -> dict[str, Any]:
    status = "n/a" if measured is None else ("pass" if passed(measured) else "miss")
    return {"name": name, "goal": goal, "measured": measured, "threshold": threshold, "status": status, "note": note}


def _median(s: dict | None, key: str = "median"):
    return None if s is None else s[key]


def _amdahl_note(ab: dict) -> str:
    """Which stages cost the same in both arms, and the speed-up they cap (A total / their time)."""
    sa, sb = ab["summary_a"], ab["summary_b"]
    total_a = _median(sa["warm"]["total_s"])
    shared = {}
    for name, st in sb["warm_stages"].items():
        a, b = _median(sa["warm_stages"].get(name)), _median(st)
        if a and b and 2 / 3 <= a / b <= 1.5:  # wide: a shared machine makes equal work vary
            shared[name] = b
    if not shared or not total_a:
        return ""
    t = sum(shared.values())
    total_b = _median(sb["warm"]["total_s"])
    return (f"{' + '.join(shared)} cost the same in both arms ({100 * t / total_b:.0f}% of B's warm run), "
            f"which caps the speed-up at about {total_a / t:.1f}x however fast the rest gets")


def evaluate_targets(report: dict) -> list[dict[str, Any]]:
    """The issue's six targets, each as a side-by-side ratio from this report (n/a when not run)."""
    out = []
    base = next((ab for ab in report.get("ab") or () if ab["a"] == "baseline"), None)
    speedup = base["ratio_median_warm"] if base else None
    note = _amdahl_note(base) if base else ""
    out.append(_target("baseline_speedup", "warm clone >= 5x faster than the baseline profile", speedup, 5.0,
                       lambda v: v >= 5.0, note))
    cached = next((s for s in report.get("series") or () if s["summary"]["prompt_cache_hits"]), None)
    hit_ratio = None
    if cached:
        miss = [r["prompt_s"] for r in cached["runs"] if r["prompt_cache"] == "miss" and r["prompt_s"]]
        hits = [r["prompt_s"] for r in cached["runs"] if r["prompt_cache"] in HITS and r["prompt_s"] is not None]
        if miss and hits:
            hit_ratio = float(np.median(hits)) / float(np.median(miss))
    out.append(_target("cache_hit_prompt", "cache-hit prompt stage < 5% of the miss", hit_ratio, 0.05,
                       lambda v: v < 0.05))
    lm = report.get("lm")
    out.append(_target("lm_vs_hf", "our decode loop >= 2x HF-generate-style tokens/s",
                       lm and lm["decode_speedup"], 2.0, lambda v: v >= 2.0,
                       "" if not lm else f"{lm['ours']['decode_tok_s']:.1f} vs {lm['hf_style']['decode_tok_s']:.1f} "
                                         f"tok/s at a {lm['prompt_len']}-token context, {lm['threads']} thread(s)"))
    out.append(_target("lm_vs_bound", "our decode loop >= 70% of the memory-bandwidth bound",
                       lm and lm["fraction_of_bound"], 0.7, lambda v: v >= 0.7,
                       "" if not lm else f"bound {lm['bandwidth_bound_tok_s']:.1f} tok/s = "
                                         f"{lm['copy_bandwidth_gb_s']:.1f} GB/s / {lm['bytes_per_token_mb']:.1f} MB"
                                         + (f"; weight reading is {lm['weight_floor']['fraction']:.0%} of a step "
                                            f"({lm['weight_floor']['weights_ms']:.1f} of {lm['weight_floor']['step_ms']:.1f} "
                                            f"ms, alternated)" if lm.get("weight_floor") else "")))
    flow, note = None, ""
    comp = report.get("compute") or {}
    for name, arm in (comp.get("arms") or {}).items():
        if (st := arm["stages"].get("flow")) and st["fraction_of_peak"] is not None:
            flow = st["fraction_of_peak"]
            note = (f"{name}: {st['gflop_s']:.1f} GFLOP/s vs {arm['dtype']} matmul peak "
                    f"{comp['peak_gflop_s'].get(arm['dtype'], 0):.1f} GFLOP/s (DiT FLOPs from shapes)")
    out.append(_target("flow_vs_peak", "flow >= 60% of the measured matmul peak", flow, 0.6,
                       lambda v: v >= 0.6, note))
    conc = {p["value"]: p for p in (report.get("sweeps") or {}).get("concurrency", ())}
    scale = conc[4]["throughput"] / conc[1]["throughput"] if 1 in conc and 4 in conc else None
    out.append(_target("concurrency_4", "4 concurrent requests >= 2.5x the throughput of serial", scale, 2.5,
                       lambda v: v >= 2.5, "batching shares the LM's weight reads and each Euler step's DiT call; "
                                           "on a CPU near its matmul peak the flow's FLOPs still add up"))
    ttfa, note = None, ""
    stream = report.get("stream")
    offline = stream and next((s for s in report.get("series") or () if s["arm"] == stream["arm"]
                               and s["op"] == stream["op"]), None)
    points = sorted((p for p in report.get("stream_texts") or () if p["ttfa_s"] is not None and p.get("main", True)),
                    key=lambda p: p["seconds"])
    if points and points[0]["ttfa_fraction"] is not None:
        p = points[0]
        ttfa, note = p["ttfa_fraction"], (f"{p['seconds']:g} s text: first audio after {p['ttfa_s']:.2f} s vs "
                                          f"{p['offline_total_s']:.2f} s offline (medians)")
    elif offline and stream["summary"]["warm"]["ttfa_s"] and offline["summary"]["warm"]["total_s"]:
        first, full = stream["summary"]["warm"]["ttfa_s"]["median"], offline["summary"]["warm"]["total_s"]["median"]
        ttfa, note = first / full, f"first chunk after {first:.2f} s vs {full:.2f} s offline (warm medians)"
    out.append(_target("ttfa", "streaming time to first audio <= 15% of full latency", ttfa, 0.15,
                       lambda v: v <= 0.15, note))
    growth, note = None, ""
    if len(points) > 1:
        short, long_ = points[0], points[-1]
        growth = long_["ttfa_s"] / short["ttfa_s"]
        note = (f"{long_['seconds']:g} s text {long_['ttfa_s']:.2f} s vs {short['seconds']:g} s text "
                f"{short['ttfa_s']:.2f} s")
    out.append(_target("ttfa_length", "time to first audio independent of text length (longest / shortest "
                                      "<= 1.25)", growth, 1.25, lambda v: v <= 1.25, note))
    load = report.get("load") or {}
    out.append(_target("load_rss", "peak RSS while loading <= 1.3x the weights' size", load.get("ratio_to_loaded"),
                       1.3, lambda v: v <= 1.3, "RSS growth during load / bytes of the loaded weights (at the "
                                                "run dtype) + ONNX files"))
    return out


def machine_info(config) -> dict[str, Any]:
    """The `machine` section: CPU, cores, torch, threads, device and GPU, Python, platform, editx."""
    import platform

    import torch

    from editx.config import resolve_device

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    device = resolve_device(config.device)
    try:
        from importlib.metadata import version

        editx_version = version("editx")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        editx_version = None
    threads = config.threads or torch.get_num_threads()  # the bench sets config.threads before each run
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": threads,
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "python": platform.python_version(), "platform": platform.platform(), "editx": editx_version}


# ---- writers ------------------------------------------------------------------------------------------
def write_json(report: dict, path: Path) -> Path:
    path.write_text(json.dumps(report, indent=1, default=_jsonable))
    return path


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def _f(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _series_table(summary: dict) -> list[str]:
    lines = ["| metric | cold | warm median | p90 | min | max |", "|---|---|---|---|---|---|"]
    cold = summary["cold"] or {}
    rows = [(k, cold.get(k), summary["warm"][k]) for k in RUN_METRICS]
    rows += [(f"stage {s}", (cold.get("stages") or {}).get(s), st) for s, st in summary["warm_stages"].items()]
    for name, c, st in rows:
        if c is None and st is None:
            continue
        st = st or {}
        lines.append(f"| {name} | {_f(c)} | {_f(st.get('median'))} | {_f(st.get('p90'))} | {_f(st.get('min'))} "
                     f"| {_f(st.get('max'))} |")
    lines.append(f"\nruns {summary['runs']} (warm {summary['warm_runs']}), prompt cache hits "
                 f"{summary['prompt_cache_hits']}, misses {summary['prompt_cache_misses']}")
    if q := summary.get("quality"):
        lines.append(f"quality: WER median {_f(_median(q['wer']))}, speaker similarity median "
                     f"{_f(_median(q['speaker_similarity']))}, oracle errors {q['errors']}")
    return lines


def markdown(report: dict) -> str:
    m, c = report["machine"], report["config"]
    out = [f"# editx bench ({report['created']})", "",
           f"machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']} ({m['threads']} threads), "
           f"device {m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}",
           f"model: {c['model_dir']} (backend {c['backend']}, fixture {c.get('fixture') or '-'}), "
           f"max_new_tokens {c.get('max_new_tokens')}, text {c['text']!r}", ""]
    for s in report.get("series") or ():
        if s.get("in_ab"):
            continue  # shown under its A/B section
        out += [f"## {s['op']} on `{s['arm']}` {s['overrides'] or ''} (warm-up {_f(s['warmup_s'], '.2f')} s)", ""]
        out += _series_table(s["summary"]) + [""]
    for ab in report.get("ab") or ():
        out += [f"## A/B {ab['op']}: A=`{ab['a']}` vs B=`{ab['b']}` (ratio = A total / B total)", "",
                "| pair | A total s | B total s | ratio |", "|---|---|---|---|"]
        out += [f"| {p['index']}{' (cold)' if p['cold'] else ''} | {_f(p['a_total_s'])} | {_f(p['b_total_s'])} | "
                f"{_f(p['ratio'], '.2f')} |" for p in ab["pairs"]]
        out += ["", f"median warm ratio **{_f(ab['ratio_median_warm'], '.2f')}**, cold "
                    f"{_f(ab['ratio_cold'], '.2f')}", ""]
        for key in ("a", "b"):
            warm_up = next((s["warmup_s"] for s in report.get("series") or () if s["arm"] == ab[key]), None)
            out += [f"### `{ab[key]}` (warm-up {_f(warm_up, '.2f')} s)", ""] + _series_table(ab[f"summary_{key}"]) + [""]
    if stream := report.get("stream"):
        warm = stream["summary"]["warm"]
        out += [f"## streaming ({stream['op']} on `{stream['arm']}`, {stream['summary']['runs']} warm runs)", "",
                f"time to first audio median {_f(_median(warm['ttfa_s']))} s, streamed total median "
                f"{_f(_median(warm['total_s']))} s (streamed stages may overlap each other)", ""]
    if points := report.get("stream_texts"):
        out += ["## time to first audio vs full latency, by text length (medians)", "",
                "| text | arm | chars | segments | audio s | first audio s | streamed total s | offline total s | "
                "first / offline | before first audio |", "|---|---|---|---|---|---|---|---|---|---|"]
        for p in points:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(p["first_stages"].items(), key=lambda kv: -kv[1]))
            out.append(f"| {p['seconds']:g} s | {p.get('arm', '-')} | {p['chars']} | {p['segments']} | {_f(p['audio_s'], '.1f')} | "
                       f"{_f(p['ttfa_s'], '.2f')} | {_f(p['stream_total_s'], '.2f')} | "
                       f"{_f(p['offline_total_s'], '.2f')} | {_f(p['ttfa_fraction'])} | {parts} |")
        out.append("")
    if verify := report.get("verify"):
        from editx.bench_verify import markdown as verify_markdown

        out += verify_markdown(verify)
    for name, points in (report.get("sweeps") or {}).items():
        out += [f"## sweep: {name}", "", "| value | requests | throughput (audio s / wall s) | p50 s | p90 s |",
                "|---|---|---|---|---|"]
        out += [f"| {p['value']} | {p['requests']} | {_f(p['throughput'])} | {_f(p['latency_p50_s'])} | "
                f"{_f(p['latency_p90_s'])} |" for p in points] + [""]
    if lm := report.get("lm"):
        out += ["## LM decode", "", "| loop | prefill s | decode tok/s |", "|---|---|---|",
                f"| ours | {_f(lm['ours']['prefill_s'])} | {_f(lm['ours']['decode_tok_s'], '.1f')} |",
                f"| ours, batch {lm['batch']} | {_f(lm['ours_batched']['prefill_s'])} | "
                f"{_f(lm['ours_batched']['decode_tok_s'], '.1f')} |",
                f"| HF-generate style | {_f(lm['hf_style']['prefill_s'])} | {_f(lm['hf_style']['decode_tok_s'], '.1f')} |",
                *([f"| ours, small ops on all threads | {_f(lm['ours_all_threads']['prefill_s'])} | "
                   f"{_f(lm['ours_all_threads']['decode_tok_s'], '.1f')} |"] if "ours_all_threads" in lm else []),
                f"| bandwidth bound | | {_f(lm['bandwidth_bound_tok_s'], '.1f')} |", "",
                f"same greedy tokens: {lm['same_greedy_tokens']}", ""]
    if (comp := report.get("compute")) and comp.get("arms"):
        pk = comp["peak_gflop_s"]
        out += ["## compute bound (FLOPs counted from shapes, warm offline runs, medians)", "",
                f"measured matmul peak: float32 {_f(pk.get('float32'), '.1f')} GFLOP/s, bfloat16 "
                f"{_f(pk.get('bfloat16'), '.1f')} GFLOP/s ({comp.get('threads')} threads)", "",
                "| arm:op | dtype | stage | GFLOP/s | fraction of peak |", "|---|---|---|---|---|"]
        for name, arm in comp["arms"].items():
            out += [f"| {name} | {arm['dtype']}{'/' + arm['quantize'] if arm.get('quantize') else ''} | {stage} | "
                    f"{_f(v['gflop_s'], '.1f')} | {_f(v['fraction_of_peak'], '.2f')} |" for stage, v in arm["stages"].items()]
        out.append("")
    if (load := report.get("load")) and "error" not in load:
        out += ["## load (fresh process)", "",
                f"RSS before {_f(load['rss_before_mb'], '.0f')} MB, peak {_f(load['peak_rss_mb'], '.0f')} MB, "
                f"growth {_f(load['load_delta_mb'], '.0f')} MB; loaded weights "
                f"{_f(load['loaded_weight_bytes'] / 2**20, '.0f')} MB, weight files "
                f"{_f((load['weight_file_bytes'] or 0) / 2**20, '.0f')} MB; load {_f(load['load_s'], '.2f')} s", ""]
    if voices := report.get("voices"):
        from editx.bench_voices import markdown as voices_markdown

        out += voices_markdown(voices)
    out += ["## targets", "", "| target | measured | threshold | status | note |", "|---|---|---|---|---|"]
    out += [f"| {t['goal']} | {_f(t['measured'])} | {t['threshold']} | {t['status']} | {t['note']} |"
            for t in report.get("targets") or ()]
    return "\n".join(out) + "\n"


def write_markdown(report: dict, path: Path) -> Path:
    path.write_text(markdown(report))
    return path


def write_png(report: dict, path: Path) -> Path | None:
    """Stacked stage bars per run, then one panel per scaling sweep. None when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'editx[bench]'); no PNG chart written")
        return None
    runs = [r for s in report.get("series") or () for r in s["runs"]]
    runs += [r for ab in report.get("ab") or () for r in ab["runs_a"] + ab["runs_b"]]
    sweeps = report.get("sweeps") or {}
    fig = Figure(figsize=(11, 4 + 3.2 * len(sweeps)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1 + len(sweeps), 1, 1)
    names = list(dict.fromkeys(k for r in runs for k in r["stages"]))
    bottom = np.zeros(len(runs))
    x = np.arange(len(runs))
    for name in names:
        vals = np.array([r["stages"].get(name, 0.0) for r in runs])
        ax.bar(x, vals, bottom=bottom, label=name)
        bottom += vals
    ax.plot(x, [r["total_s"] for r in runs], "k_", markersize=14, label="total")
    ax.set_xticks(x, [f"{r.get('op', '')}/{r['arm']}#{r['index']}{'c' if r['cold'] else ''}" for r in runs],
                  rotation=60, fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title("stages per run (c = cold)")
    if names:
        ax.legend(fontsize=7, ncol=4)
    for i, (name, points) in enumerate(sweeps.items(), start=2):
        ax1 = fig.add_subplot(1 + len(sweeps), 1, i)
        xs = [p["value"] for p in points]
        ax1.plot(xs, [p["throughput"] for p in points], "o-", color="C0", label="throughput")
        ax1.set_ylabel("audio s / wall s", color="C0")
        ax2 = ax1.twinx()
        ax2.plot(xs, [p["latency_p50_s"] for p in points], "s--", color="C1", label="p50 latency")
        ax2.plot(xs, [p["latency_p90_s"] for p in points], "^:", color="C2", label="p90 latency")
        ax2.set_ylabel("latency s")
        ax1.set_xlabel(name)
        ax2.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
