"""The bench's real-voice section: the set's manifest is checked, and the side-by-side table is written."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from editx.bench_voices import METHODS, PEAK, SET_RATE, convert_clip, load_manifest, markdown, pcm_sha256
from editx.errors import ValidationError

REPO = Path(__file__).resolve().parents[1]


def _clip_folder(tmp_path: Path) -> Path:
    x = (0.1 * np.sin(np.arange(16_000) / 5)).astype(np.float32)
    sf.write(tmp_path / "a.flac", x, 16_000, subtype="PCM_16")
    digest = pcm_sha256((tmp_path / "a.flac").read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps({"clips": [{"id": "a", "file": "a.flac", "pcm_sha256": digest}]}))
    return tmp_path


def test_manifest_checks_every_file_and_its_digest(tmp_path):
    folder = _clip_folder(tmp_path)
    assert [c["id"] for c in load_manifest(folder)] == ["a"]
    x, _ = sf.read(folder / "a.flac", dtype="float32")
    sf.write(folder / "a.flac", x, 16_000, subtype="PCM_16", compression_level=1.0)  # other FLAC bytes, same samples
    assert [c["id"] for c in load_manifest(folder)] == ["a"]
    sf.write(folder / "a.flac", np.zeros(16_000, np.float32), 16_000, subtype="PCM_16")  # another clip, same name
    with pytest.raises(ValidationError, match="SHA-256"):
        load_manifest(folder)
    (folder / "a.flac").unlink()
    with pytest.raises(ValidationError, match="missing"):
        load_manifest(folder)
    with pytest.raises(ValidationError, match="not a real-voice manifest"):
        load_manifest(tmp_path / "nowhere")


def test_committed_manifest_names_sources_and_licences():
    clips = json.loads((REPO / "data" / "real-voices" / "manifest.json").read_text(encoding="utf-8"))["clips"]
    assert len(clips) >= 10 and len({c["id"] for c in clips}) == len(clips)
    for c in clips:
        assert c["transcript"] and c["license"] and len(c["sha256"]) == 64 and len(c["pcm_sha256"]) == 64
        assert set(c["source"]) == {"repo", "path", "commit"} and len(c["source"]["commit"]) == 40
    low = [c for c in clips if c["f0_hz"] < 160]
    assert 3 <= len(low) <= len(clips) - 3  # men and women
    assert sum(c["language"] == "en" for c in clips) >= len(clips) // 2


def test_side_by_side_table_has_one_row_per_clip_and_the_medians():
    def cell(v):
        return {"objective": v, "held_out": v - 0.05, "wer": 0.0, "match_s": 2.0, "voice": "x"}

    rows = [{"id": f"c{i}", "f0_hz": 100 + i, "search_probes": 9, "out_of_time": i == 1,
             **{m: cell(0.5 + 0.1 * k + 0.01 * i) for k, m in enumerate(METHODS)}} for i in range(3)]
    summary = {m: {"objective": 0.5 + 0.1 * k + 0.01, "held_out": 0.45 + 0.1 * k + 0.01, "wer": 0.0,
                   "match_s": 2.0, "match_s_max": 2.0} for k, m in enumerate(METHODS)}
    section = {"clips": rows, "summary": summary, "held_out_text": "t", "match_fraction": 0.6, "search_probes": 9,
               "search_budget_s": None, "load_avg_before": [3.0, 0, 0], "load_avg_after": [4.0, 0, 0], "cores": 2}
    lines = markdown(section)
    table = [line for line in lines if line.startswith("| c") and not line.startswith("| clip")]
    assert len(table) == 3 and "(out of time)" in table[1] and "(out of time)" not in table[0]
    median = next(line for line in lines if line.startswith("| median"))
    assert "**0.760** (0.810)" in median  # the search column: held-out, then the objective
    assert "no time limit" in lines[2] and "load average 3.0 → 4.0" in lines[2]


def _stereo_wav(rate: int, peak: float) -> bytes:
    t = np.arange(rate) / rate
    left = peak * np.sin(2 * np.pi * 220 * t)
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, 0.5 * left], axis=1).astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_convert_clip_makes_the_sets_form():
    loud = convert_clip(_stereo_wav(24_000, 1.6), name="loud.wav")  # mono mean peaks at 1.2: scaled down
    y, rate = sf.read(io.BytesIO(loud), dtype="float32")
    info = sf.info(io.BytesIO(loud))
    assert (rate, info.channels, info.format, info.subtype) == (SET_RATE, 1, "FLAC", "PCM_16")
    assert len(y) == SET_RATE and abs(float(np.abs(y).max()) - PEAK) < 2e-3
    quiet = convert_clip(_stereo_wav(SET_RATE, 0.4), name="quiet.wav")  # 0.3 after the mean: untouched
    q, _ = sf.read(io.BytesIO(quiet), dtype="float32")
    assert abs(float(np.abs(q).max()) - 0.3) < 2e-3
    assert pcm_sha256(quiet) != pcm_sha256(loud)


def _script():
    spec = importlib.util.spec_from_file_location("fetch_real_voices", REPO / "scripts" / "fetch_real_voices.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rebuild_script_converts_fetched_sources_and_checks_them(tmp_path, capsys):
    src = tmp_path / "src" / "owner" / "repo" / "ex"
    src.mkdir(parents=True)
    (src / "a.wav").write_bytes(_stereo_wav(22_050, 0.5))
    clip = {"id": "a", "file": "a.flac", "pcm_sha256": pcm_sha256(convert_clip(_stereo_wav(22_050, 0.5), name="a")),
            "source": {"repo": "owner/repo", "path": "ex/a.wav", "commit": "0" * 40}}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"clips": [clip]}))
    args = ["--sources", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--manifest", str(manifest)]
    script = _script()
    assert script.main(args) == 0
    assert pcm_sha256((tmp_path / "out" / "a.flac").read_bytes()) == clip["pcm_sha256"]
    (src / "a.wav").write_bytes(_stereo_wav(22_050, 0.25))  # another recording under the same path
    assert script.main(args) == 1 and "DIFFERS" in capsys.readouterr().out
    (src / "a.wav").unlink()
    assert script.main(args) == 1
    assert script.main(["--print-urls", "--manifest", str(manifest)]) == 0
    assert "owner/repo/" + "0" * 40 + "/ex/a.wav" in capsys.readouterr().out
