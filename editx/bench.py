"""`editx bench`: the benchmark runner. Cold and warm runs with per-stage times, A/B comparisons
alternated in one process, the `baseline` profile (the reference system's behaviour), scaling sweeps,
the LM loop vs HF-style decoding and its bandwidth bound, a clean-process load probe and optional
quality oracles; writes a versioned JSON report, a Markdown table and a PNG chart.

Import is light (argparse only): models, torch and matplotlib load inside `run`.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from editx.bench_config import (  # noqa: F401
    FIXTURE_TOKEN_CAP,
    OVERRIDE_KEYS,
    PROFILES,
    apply_overrides,
    base_config,
    fixture_dir,
    parse_overrides,
)
from editx.errors import ValidationError

log = logging.getLogger(__name__)

DEFAULT_TEXT = "Benchmarks measure what a report could only estimate."
SENTENCES = ("Benchmarks measure what a report could only estimate.",
             "Every stage is timed on the same clock, and nothing is guessed.",
             "Warm runs reuse the cached prompt, while cold runs pay for everything once.",
             "Throughput counts seconds of audio produced per second of wall time.",
             "Latency is reported as a median and a ninetieth percentile.",
             "The same seed makes both arms of a comparison say the same thing.",
             "A longer text gives the language model more tokens to write.",
             "Finally, the report shows each target with the ratio that was measured.")
def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model-dir", type=Path, default=None,
                   help="Step-Audio-EditX model dir (default: the generated fixture named by --fixture)")
    g.add_argument("--fixture", choices=("small", "tiny"), default="small",
                   help="fixture preset used when no --model-dir is given (generated once under --fixtures-dir)")
    g.add_argument("--fixtures-dir", type=Path, default=None, help="where generated fixtures are kept")
    g.add_argument("--backend", choices=("editx", "lite"), default="editx")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--quantize", default=None, choices=("int8", "bnb8", "bnb4", "awq"))
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    g.add_argument("--onnx-threads", type=int, default=1)
    g.add_argument("--flow-steps", type=int, default=10)
    g.add_argument("--max-batch", type=int, default=8)
    g.add_argument("--no-warmup", action="store_true")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"LM token cap per request (default {FIXTURE_TOKEN_CAP} on a fixture, none on real "
                        "weights; 0 = none)")
    r = p.add_argument_group("runs")
    r.add_argument("--prompt-audio", type=Path, default=None, help="prompt clip (default: the bundled one)")
    r.add_argument("--prompt-text", default=None)
    r.add_argument("--text", default=DEFAULT_TEXT)
    r.add_argument("--runs", type=int, default=4, help="runs per series (the first is the cold run)")
    r.add_argument("--ops", default="clone", help="comma list: clone and/or edit types (emotion, style, speed, "
                                                  "paralinguistic, denoise, vad), or 'all'")
    r.add_argument("--stream-runs", type=int, default=2,
                   help="warm streamed clones on the main arm (time to first audio); 0 = none")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quality", action="store_true", help="WER (Whisper tiny.en) and speaker similarity per run")
    a = p.add_argument_group("A/B")
    a.add_argument("--a", default=None, help="arm A overrides, e.g. 'cache=off' or 'baseline'")
    a.add_argument("--b", default=None, help="arm B overrides, e.g. 'cache=on'")
    a.add_argument("--profile", choices=("baseline",), default=None,
                   help="baseline: A = the reference system's behaviour, B = our defaults")
    a.add_argument("--pairs", type=int, default=3, help="A/B pairs (the first pair is cold)")
    s = p.add_argument_group("sections")
    s.add_argument("--sweep", default="", help="comma list: prompt, text, concurrency, or all")
    s.add_argument("--prompt-lengths", default="3,10,20,30", help="seconds")
    s.add_argument("--text-lengths", default="1,2,4", help="sentences")
    s.add_argument("--concurrency", default="1,2,4,8")
    s.add_argument("--sweep-rounds", type=int, default=1, help="waves per sweep point")
    s.add_argument("--stream-texts", default="",
                   help="seconds of speech, e.g. 5,60: time to first audio vs full latency per text length "
                        "(streamed and offline, alternated; --all runs 5,60)")
    s.add_argument("--stream-text-runs", type=int, default=1, help="streamed + offline pairs per text length")
    s.add_argument("--stream-sweep", default="", help="listener counts, e.g. 1,2,4,8: streams at once, "
                   "scheduler off (fifo) vs on (fair), side by side (editx/bench_streams.py; a ~12 s text "
                   "unless --text is given)")
    s.add_argument("--stream-sweep-runs", type=int, default=3, help="waves per listener count and arm")
    s.add_argument("--verify-texts", type=int, default=0,
                   help="verification section: cost and retries over this many texts (needs editx[quality])")
    s.add_argument("--lm", action="store_true", help="LM tokens/s: ours vs HF-generate style vs bandwidth bound")
    s.add_argument("--lm-prompt-len", type=int, default=512)
    s.add_argument("--lm-new-tokens", type=int, default=64)
    s.add_argument("--lm-batch", type=int, default=4)
    s.add_argument("--load", action="store_true", help="peak RSS while loading, in a fresh process")
    s.add_argument("--voices", type=Path, default=None,
                   help="real-voice set folder (manifest.json): lite voice similarity per clip and method, "
                        "side by side (see data/real-voices/README.md)")
    s.add_argument("--voices-limit", type=int, default=None, help="only the first N clips of --voices")
    s.add_argument("--memory", action="store_true",
                   help="only the memory section: bytes per component and precision for the released model "
                        "(meta device, no weights needed), KV cache and activations, checked against the RSS of "
                        "loading the fixture / --model-dir")
    s.add_argument("--all", action="store_true", help="every section: sweeps, lm, load")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=Path("editx-bench"), help="folder for bench.json/.md/.png")
    o.add_argument("--note", default="", help="free text stored in the report (e.g. machine conditions)")


def _csv_numbers(text: str, kind=float) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValidationError(f"expected a comma list of numbers, got {text!r}") from None


class Requests:
    """Builds the bench's requests: one op (clone or an edit type) at a given index (seed = seed + i)."""

    def __init__(self, prompt, prompt_text: str, text: str, seed: int) -> None:
        self.prompt, self.prompt_text, self.text, self.seed = prompt, prompt_text, text, seed

    def make(self, op: str, i: int = 0, *, prompt=None, prompt_text=None, text=None, sampling=None):
        """Request `i` of a series: the same seed for every i (equal work per run, A and B say the same
        thing); concurrency sweeps pass distinct `i` through `seed_offset` instead."""
        return self.make_seeded(op, self.seed, prompt=prompt, prompt_text=prompt_text, text=text, sampling=sampling)

    def make_seeded(self, op: str, seed: int, *, prompt=None, prompt_text=None, text=None, sampling=None):
        from editx.lm.prompts import EDIT_OPTIONS
        from editx.pipeline.types import CloneRequest, EditRequest

        prompt, prompt_text = prompt or self.prompt, prompt_text or self.prompt_text
        if op == "clone":
            return CloneRequest(prompt, prompt_text, text or self.text, seed=seed, sampling=sampling)
        options = EDIT_OPTIONS[op]
        new_text = f"{prompt_text} [Laughter]" if op == "paralinguistic" else None
        return EditRequest(prompt, prompt_text, op, options[0] if options else None, text=new_text,
                           seed=seed, sampling=sampling)

    def reference_text(self, op: str, text=None) -> str:
        if op == "clone":
            return text or self.text
        return f"{self.prompt_text} laughter" if op == "paralinguistic" else self.prompt_text


def _ops(args, engine) -> list[str]:
    from editx.lm.prompts import EDIT_OPTIONS

    wanted = [o.strip() for o in args.ops.split(",") if o.strip()]
    if "all" in wanted:
        return ["clone"] + [t for t in EDIT_OPTIONS if engine.backend.supports_edit(t)]
    bad = [o for o in wanted if o != "clone" and o not in EDIT_OPTIONS]
    if bad:
        raise ValidationError(f"unknown bench op(s) {', '.join(bad)}; use clone, {', '.join(EDIT_OPTIONS)} or all")
    return wanted


def _tile(prompt, seconds: float):
    import numpy as np

    from editx.pipeline.types import PromptAudio

    n = int(round(seconds * prompt.sample_rate))
    reps = math.ceil(n / prompt.samples.size)
    return PromptAudio(np.tile(prompt.samples, reps)[:n].astype(np.float32), prompt.sample_rate)


def run_sweeps(args, pool, arm, reqs: Requests, names: list[str]) -> dict[str, list]:
    from editx.bench_runs import sweep

    out: dict[str, list] = {}
    cap = arm.config.sampling.max_new_tokens
    if "prompt" in names:
        points = []
        for secs in _csv_numbers(args.prompt_lengths):
            reps = math.ceil(secs / reqs.prompt.duration_s)
            p, t = _tile(reqs.prompt, secs), " ".join([reqs.prompt_text] * reps)
            points.append((secs, [reqs.make("clone", 0, prompt=p, prompt_text=t)]))
        out["prompt_seconds"] = sweep(pool, arm, points, rounds=max(1, args.sweep_rounds))
    if "text" in names:
        points = []
        for n in _csv_numbers(args.text_lengths, int):
            text = " ".join((SENTENCES * (n // len(SENTENCES) + 1))[:n])
            # a fixture's cap scales with the text, as the real model's output length does
            sampling = replace(arm.config.sampling, max_new_tokens=cap * n) if cap else None
            points.append((n, [reqs.make("clone", 0, text=text, sampling=sampling)]))
        out["text_sentences"] = sweep(pool, arm, points, rounds=max(1, args.sweep_rounds))
    if "concurrency" in names:
        from editx.bench_runs import measure

        measure(pool, arm, reqs.make("clone", 0))  # the prompt is cached before the sweep
        points = [(c, [reqs.make_seeded("clone", reqs.seed + i) for i in range(c)]) for c in _csv_numbers(args.concurrency, int)]
        out["concurrency"] = sweep(pool, arm, points, rounds=max(1, args.sweep_rounds))
    return out


def run(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from editx import bench_report as report_mod
    from editx import bench_runs
    from editx.audio.io import load_audio
    from editx.pipeline.types import PromptAudio

    config, fixture = base_config(args)
    if args.memory:
        return run_memory(args, config, fixture)
    prompt_path = args.prompt_audio or Path(__file__).parent / "assets" / "reference_en.wav"
    prompt_text = args.prompt_text or (prompt_path.with_suffix(".txt").read_text().strip()
                                       if args.prompt_audio is None else None)
    if not prompt_text:
        raise ValidationError("--prompt-text (the transcript of --prompt-audio) is required")
    audio = load_audio(prompt_path)
    reqs = Requests(PromptAudio(audio.samples, audio.sample_rate), prompt_text, args.text, args.seed)
    sweeps = {"prompt", "text", "concurrency"} if args.all or "all" in args.sweep else \
        {s.strip() for s in args.sweep.split(",") if s.strip()}
    a_spec, b_spec = (("baseline", "default") if args.profile == "baseline" else (args.a, args.b))
    if (a_spec is None) != (b_spec is None):
        raise ValidationError("A/B mode needs both --a and --b (or --profile baseline)")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="editx-bench-"))
    pool = bench_runs.ArmPool(workdir)
    report: dict[str, Any] = {
        "schema": report_mod.SCHEMA, "schema_version": report_mod.SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": report_mod.machine_info(config),
        "config": {"model_dir": str(config.model_dir) if config.model_dir else None, "backend": config.backend,
                   "fixture": fixture, "max_new_tokens": config.sampling.max_new_tokens, "text": args.text,
                   "prompt_audio": str(prompt_path), "prompt_s": reqs.prompt.duration_s, "runs": args.runs,
                   "pairs": args.pairs, "ops": args.ops, "a": a_spec, "b": b_spec, "seed": args.seed,
                   "note": args.note, "engine": _config_dict(config)},
        "series": [], "ab": [], "stream": None, "stream_texts": [], "sweeps": {}, "lm": None, "load": None, "compute": None,
        "targets": [],
    }
    oracle = None
    if args.quality:
        from editx.quality import QualityOracle

        oracle = QualityOracle(threads=args.threads or 2)
    try:
        if a_spec is not None:
            over_a, over_b = parse_overrides(a_spec), parse_overrides(b_spec)
            names = ("baseline", "ours") if args.profile else ("A", "B")
            arm_a = pool.add(names[0], apply_overrides(config, over_a), over_a)
            arm_b = pool.add(names[1], apply_overrides(config, over_b), over_b)
            main_arm = arm_b
            for op in _ops(args, arm_b.engine):
                kw = _quality_kw(oracle, reqs, op)
                ab = bench_runs.run_ab(pool, arm_a, arm_b, lambda i, op=op: reqs.make(op, i), args.pairs, **kw)
                report["ab"].append(report_mod.finish_ab({"op": op, **ab}))
                for arm, runs in ((arm_a, ab["runs_a"]), (arm_b, ab["runs_b"])):
                    report["series"].append(_series(arm, op, runs, report_mod) | {"in_ab": True})
        else:
            main_arm = pool.add("default", config)
            for op in _ops(args, main_arm.engine) if args.runs > 0 else ():
                runs = bench_runs.run_series(pool, main_arm, lambda i, op=op: reqs.make(op, i), args.runs,
                                             **_quality_kw(oracle, reqs, op))
                report["series"].append(_series(main_arm, op, runs, report_mod))
        if args.stream_runs > 0:
            runs = bench_runs.run_series(pool, main_arm, lambda i: reqs.make("clone", i), args.stream_runs,
                                         cold=False, stream=True)
            report["stream"] = {"arm": main_arm.name, "op": "clone", "runs": runs,
                                "summary": report_mod.summarize(runs)}
        stream_texts = args.stream_texts or ("5,60" if args.all else "")
        if stream_texts:
            from editx.bench_stream import run_stream_texts

            arms = [a for a in pool.arms if a is not main_arm] + [main_arm]  # A/B: both arms, point by point
            report["stream_texts"] = run_stream_texts(pool, arms, reqs, _csv_numbers(stream_texts),
                                                      runs=max(1, args.stream_text_runs), fixture=bool(fixture))
        if args.stream_sweep:
            from editx import bench_streams

            report["stream_sweep"] = bench_streams.run_stream_sweep(
                pool, main_arm, reqs, _csv_numbers(args.stream_sweep, int), runs=max(1, args.stream_sweep_runs),
                fixture=bool(fixture), text=None if args.text == DEFAULT_TEXT else args.text)
            print(bench_streams.markdown(report["stream_sweep"]))
        if args.verify_texts > 0:
            from editx.bench_verify import run_verify_section

            report["verify"] = run_verify_section(pool, main_arm, reqs, args.verify_texts)
        if sweeps:
            report["sweeps"] = run_sweeps(args, pool, main_arm, reqs, sorted(sweeps))
        report["compute"] = _compute_section(pool, report)
        if args.lm or args.all:
            pool.activate(main_arm)
            report["lm"] = bench_runs.lm_section(main_arm.engine.backend, prompt_len=args.lm_prompt_len,
                                                 new_tokens=args.lm_new_tokens, batch=args.lm_batch)
        if args.load or args.all:
            report["load"] = bench_runs.probe_load(config)
        if args.voices is not None:
            report["voices"] = _voice_section(args, config, oracle)
    finally:
        pool.close()
        bench_runs.cleanup(workdir)
    report["targets"] = report_mod.evaluate_targets(report)
    paths = [report_mod.write_json(report, args.out / "bench.json"),
             report_mod.write_markdown(report, args.out / "bench.md"),
             report_mod.write_png(report, args.out / "bench.png")]
    print(report_mod.markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths if p is not None))
    return 0


def _voice_section(args, config, oracle) -> dict[str, Any]:
    from editx.bench_voices import run_voice_section
    from editx.config import EngineConfig
    from editx.lite.backend import LiteBackend
    from editx.quality import QualityOracle

    search = EngineConfig.from_env()  # EDITX_LITE_SEARCH_PROBES / _BUDGET_S, as a server would run
    lite = LiteBackend.load(threads=config.threads or 2)
    lite.warmup()
    return run_voice_section(args.voices, lite, oracle or QualityOracle(threads=config.threads or 2),
                             search_probes=search.lite_search_probes, search_budget_s=search.lite_search_budget_s,
                             limit=args.voices_limit)


def run_memory(args, config, fixture) -> int:
    """`editx bench --memory`: the release's memory table, and the formula checked on a real load."""
    import json
    import time

    from editx import bench_memory, bench_runs
    from editx.bench_report import machine_info

    section: dict[str, Any] = {"release": bench_memory.release_table(max_batch=config.max_batch,
                                                                      max_len=config.sampling.max_length,
                                                                      flow_steps=config.flow_steps)}
    if config.model_dir is not None and config.resolved_backend == "editx":
        load = bench_runs.probe_load(config.with_(dtype="float32", quantize=None))
        section.update(model_dir=str(config.model_dir), fixture=fixture, load=load)
        if "error" not in load:
            section["check"] = bench_memory.check_against_load(config.model_dir, load)
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(config), "memory": section}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(report, indent=1, default=str))
    text = "\n".join(bench_memory.markdown(section))
    (args.out / "memory.md").write_text(text)
    print(text)
    print(f"wrote {args.out / 'memory.json'}, {args.out / 'memory.md'}")
    return 0


def _compute_section(pool, report: dict) -> dict[str, Any]:
    """The measured matmul peaks (float32, bfloat16) and, per arm, each stage's achieved GFLOP/s
    over its warm offline runs and the fraction of the peak of the dtype it ran in."""
    from editx import bench_compute
    from editx.config import resolve_device, resolve_dtype

    peak = bench_compute.peaks(resolve_device(pool.arms[0].config.device) if pool.arms else "cpu")
    arms = {}
    for s in report["series"]:
        arm = next(a for a in pool.arms if a.name == s["arm"])
        dtype = str(resolve_dtype(arm.config.dtype, resolve_device(arm.config.device))).removeprefix("torch.")
        warm = [r for r in s["runs"] if not r["cold"]] or s["runs"]
        arms[f"{s['arm']}:{s['op']}"] = {"dtype": dtype, "quantize": arm.config.quantize,
                                         "stages": bench_compute.summarize(warm, peak, dtype)}
    return {"peak_gflop_s": peak, "threads": pool.arms[0].threads if pool.arms else None, "arms": arms}


def _series(arm, op: str, runs: list, report_mod) -> dict[str, Any]:
    for r in runs:
        r["op"] = op
    return {"arm": arm.name, "op": op, "overrides": arm.overrides, "warmup_s": arm.warmup_s, "runs": runs,
            "summary": report_mod.summarize(runs)}


def _quality_kw(oracle, reqs: Requests, op: str) -> dict[str, Any]:
    if oracle is None:
        return {}
    return {"quality": oracle, "reference": (reqs.reference_text(op), reqs.prompt.samples, reqs.prompt.sample_rate)}


def _config_dict(config) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(config)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
