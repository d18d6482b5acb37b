"""The bench's real-voice section: the set's manifest is checked, and the side-by-side table is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from editx.bench_voices import METHODS, load_manifest, markdown
from editx.errors import ValidationError

REPO = Path(__file__).resolve().parents[1]


def _clip_folder(tmp_path: Path) -> Path:
    x = (0.1 * np.sin(np.arange(16_000) / 5)).astype(np.float32)
    sf.write(tmp_path / "a.flac", x, 16_000, subtype="PCM_16")
    digest = hashlib.sha256((tmp_path / "a.flac").read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps({"clips": [{"id": "a", "file": "a.flac", "sha256": digest}]}))
    return tmp_path


def test_manifest_checks_every_file_and_its_digest(tmp_path):
    folder = _clip_folder(tmp_path)
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
        assert c["transcript"] and c["license"] and len(c["sha256"]) == 64
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
