"""`editx doctor`: passes on the release-shaped fixture; names the file and the problem for each broken
variant, and the loaders (and the engine) refuse the same folders with a clear one-line message."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from editx.cli import main
from editx.config import EngineConfig
from editx.doctor import check
from editx.doctor import headers as doctor_headers
from editx.errors import ModelFilesError

EDITX = "Step-Audio-EditX"
COSY = f"{EDITX}/CosyVoice-300M-25Hz"
TOK = "Step-Audio-Tokenizer"
PARA = f"{TOK}/dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
SHARD = f"{EDITX}/model-00001.safetensors"


def _copy(src: Path, dst: Path) -> Path:
    """Hard-linked copy of the session's fixture: variants replace files (unlink + write), never edit them."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _truncate(path: Path, keep: float = 0.5) -> None:
    _replace(path, path.read_bytes()[: int(path.stat().st_size * keep)])


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    _replace(path, json.dumps(data).encode())


def _resave_lm(root: Path, rename: dict[str, str]) -> None:
    from safetensors.torch import load_file, save_file

    shard = root / SHARD
    state = {rename.get(k, k): v for k, v in load_file(str(shard)).items()}
    shard.unlink()
    save_file(state, str(shard), metadata={"format": "pt"})
    index = root / EDITX / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {k: shard.name for k in state}
    _replace(index, json.dumps(data).encode())


def _resave_torch(path: Path, change) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    change(state)
    path.unlink()
    torch.save(state, path)


def _lm_loader(root):
    from editx.lm.loader import load_step1

    load_step1(root / EDITX)


def _text_loader(root):
    from editx.lm.text_tokenizer import TextTokenizer

    TextTokenizer.load(root / EDITX)


def _decoder_loader(root):
    from editx.decoder import load_decoder

    load_decoder(root / COSY)


def _tokenizer_loader(root):
    from editx.tokenizer import StepAudioTokenizer

    StepAudioTokenizer.load(root / TOK)


def _no_head_key(state):
    state["encoder_proj.weight"] = state["encoder_proj.weight"][:, :-1].clone()


# (variant id, how to break the folder, file named, words in the problem, the loader that must refuse it)
VARIANTS = [
    ("missing-file", lambda r: (r / COSY / "campplus.onnx").unlink(), f"{COSY}/campplus.onnx", "missing",
     _decoder_loader),
    ("missing-shard", lambda r: (r / SHARD).unlink(), SHARD, "missing", _lm_loader),
    ("truncated-shard", lambda r: _truncate(r / SHARD, 0.9), SHARD, "truncated", _lm_loader),
    ("truncated-flow-zip", lambda r: _truncate(r / COSY / "flow.pt"), f"{COSY}/flow.pt", "truncated",
     _decoder_loader),
    ("truncated-onnx", lambda r: _truncate(r / TOK / "speech_tokenizer_v1.onnx"),
     f"{TOK}/speech_tokenizer_v1.onnx", "truncated", _tokenizer_loader),
    ("truncated-npy", lambda r: _truncate(r / TOK / "linguistic_tokenizer.npy", 0.8),
     f"{TOK}/linguistic_tokenizer.npy", "truncated", _tokenizer_loader),
    ("wrong-lm-key", lambda r: _resave_lm(r, {"model.norm.weight": "model.final_norm.weight"}), SHARD,
     "model.final_norm.weight", _lm_loader),
    ("wrong-flow-shape", lambda r: _resave_torch(r / COSY / "flow.pt", _no_head_key), f"{COSY}/flow.pt",
     "encoder_proj.weight", _decoder_loader),
    ("wrong-para-key", lambda r: _resave_torch(r / PARA / "model.pt",
                                               lambda s: s.update({"ctc.ctc_lo.weight": torch.zeros(2, 2)})),
     f"{PARA}/model.pt", "ctc.ctc_lo.weight", _tokenizer_loader),
    ("config-disagrees", lambda r: _edit_json(r / EDITX / "config.json", intermediate_size=96), SHARD,
     "config.json implies", _lm_loader),
    ("tie-next-to-head", lambda r: _edit_json(r / EDITX / "config.json", tie_word_embeddings=True), SHARD,
     "tie_word_embeddings", _lm_loader),
    ("legacy-tokenizer", lambda r: _edit_json(r / EDITX / "tokenizer_config.json", legacy=True),
     f"{EDITX}/tokenizer.model", "legacy", _text_loader),
    ("campplus-is-not-campplus", lambda r: _replace(r / COSY / "campplus.onnx",
                                                    (r / TOK / "speech_tokenizer_v1.onnx").read_bytes()),
     f"{COSY}/campplus.onnx", "takes 2 inputs", _decoder_loader),
    ("lfs-pointer", lambda r: _replace(r / COSY / "hift.pt", b"version https://git-lfs.github.com/spec/v1\n"
                                                             b"oid sha256:0\nsize 83000000\n"),
     f"{COSY}/hift.pt", "Git LFS pointer", _decoder_loader),
]


@pytest.fixture(scope="module")
def fixture_report(tiny_model_dir):
    return check(tiny_model_dir)


def test_doctor_passes_on_the_release_shaped_fixture(fixture_report, tiny_model_dir):
    assert fixture_report.ok and fixture_report.findings == ()
    assert len(fixture_report.checked) == 14  # 13 named files + the one shard the index names
    assert fixture_report.lines()[-1].startswith(f"{tiny_model_dir}: will load")


def test_fixture_has_the_release_shape(tiny_model_dir):
    lm = tiny_model_dir / EDITX
    assert not (lm / "tokenizer.json").exists() and (lm / "tokenizer.model").is_file()
    assert "legacy" not in json.loads((lm / "tokenizer_config.json").read_text())
    assert "tie_word_embeddings" not in json.loads((lm / "config.json").read_text())
    assert zipfile.is_zipfile(tiny_model_dir / PARA / "model.pt")


@pytest.mark.parametrize("name, breaks, where, needle, loader", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_each_broken_variant_is_named(tiny_model_dir, tmp_path, name, breaks, where, needle, loader):
    root = _copy(tiny_model_dir, tmp_path / "models")
    breaks(root)
    report = check(root)
    assert not report.ok
    hits = [f for f in report.findings if f.where == where and needle in f.problem]
    assert hits, report.lines()
    assert all("\n" not in line and "Traceback" not in line for line in report.lines())
    with pytest.raises(ModelFilesError) as info:  # the loader itself refuses it too, in one line
        loader(root)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_the_engine_refuses_with_the_doctors_lines(tiny_model_dir, tmp_path):
    from editx.pipeline.engine import Engine

    root = _copy(tiny_model_dir, tmp_path / "models")
    _truncate(root / SHARD, 0.9)
    with pytest.raises(ModelFilesError) as info:
        Engine.load(EngineConfig(model_dir=root, warmup=False))
    for line in check(root).lines()[:-1]:
        assert line in str(info.value)


@pytest.mark.parametrize("layout, where, needle", [
    ("parent-of-root", ".", "one level too deep"),
    ("lm-folder-itself", EDITX, "folder itself"),
    ("nested-lm", f"{EDITX}/{EDITX}", "nested one level too deep"),
])
def test_folder_nesting(tiny_model_dir, tmp_path, layout, where, needle):
    root = _copy(tiny_model_dir, tmp_path / "outer" / "models")
    target = tmp_path / "outer"
    if layout == "lm-folder-itself":
        target = root / EDITX
    elif layout == "nested-lm":
        inner = root / EDITX / EDITX
        inner.mkdir()
        for name in ("config.json", "model-00001.safetensors"):
            (root / EDITX / name).rename(inner / name)
        target = root
    report = check(target)
    assert not report.ok
    assert any(needle in f.problem and (f.where == where or f.where == str(target)) for f in report.findings), \
        report.lines()


def test_onnx_reader_seeks_past_weights_and_matches_onnxruntime(tiny_model_dir, monkeypatch):
    import onnxruntime as ort

    from editx.tokenizer.speech import onnx_inputs

    path = tiny_model_dir / TOK / "speech_tokenizer_v1.onnx"
    expected = onnx_inputs(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    assert doctor_headers.onnx_graph_inputs(path) == expected == [("feats", "float", [1, 128, "T"]),
                                                                  ("feats_length", "int32", [1])]
    monkeypatch.setattr(doctor_headers, "_LARGE", 64)  # every weight is now skipped by seeking
    assert doctor_headers.onnx_graph_inputs(path) == expected


def test_torch_archive_index_matches_torch_load(tiny_model_dir):
    path = tiny_model_dir / COSY / "hift.pt"
    index = doctor_headers.torch_archive_index(path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert {k: (tuple(v.shape), v.dtype) for k, v in index.items()} == \
        {k: (tuple(v.shape), v.dtype) for k, v in loaded.items()}
    assert all(v.is_meta for v in index.values())


# ---- CLI -----------------------------------------------------------------------------------------------------

def test_cli_doctor_exit_codes(tiny_model_dir, tmp_path, capsys):
    assert main(["doctor", str(tiny_model_dir)]) == 0
    assert "will load" in capsys.readouterr().out
    root = _copy(tiny_model_dir, tmp_path / "models")
    (root / COSY / "flow.pt").unlink()
    assert main(["doctor", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {COSY}/flow.pt: missing" in out and "editx download" in out and "Traceback" not in out


def test_cli_serve_refuses_a_broken_folder_before_serving(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import editx.server.run

    monkeypatch.setattr(editx.server.run, "serve", lambda *a, **k: pytest.fail("serve started"))
    root = _copy(tiny_model_dir, tmp_path / "models")
    _truncate(root / COSY / "hift.pt")
    assert main(["serve", "--model-dir", str(root)]) == 1
    assert f"ERROR {COSY}/hift.pt" in capsys.readouterr().err


def _fake_downloader(source_root: Path, calls: list, damage: str | None = None):
    def fetch(repo_id: str, revision: str | None, local_dir: Path) -> None:
        calls.append((repo_id, revision, local_dir.name))
        shutil.copytree(source_root / local_dir.name, local_dir, dirs_exist_ok=True, copy_function=os.link)
        if damage and (local_dir.parent / damage).is_file():
            _truncate(local_dir.parent / damage)
    return fetch


def test_cli_download_pins_revisions_then_runs_doctor(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import editx.hub as hub

    calls: list = []
    monkeypatch.setattr(hub, "_huggingface", _fake_downloader(tiny_model_dir, calls))
    assert main(["download", str(tmp_path / "a")]) == 0
    assert calls == [("stepfun-ai/Step-Audio-Tokenizer", hub.REVISIONS[TOK], TOK),
                     ("stepfun-ai/Step-Audio-EditX", hub.REVISIONS[EDITX], EDITX)]
    assert all(len(rev) == 40 for rev in hub.REVISIONS.values())
    assert "will load" in capsys.readouterr().out
    calls.clear()
    assert main(["download", str(tmp_path / "b"), "--editx-revision", "abc123"]) == 0
    assert calls[1][1] == "abc123" and calls[0][1] == hub.REVISIONS[TOK]
    monkeypatch.setattr(hub, "_huggingface", _fake_downloader(tiny_model_dir, calls, damage=SHARD))
    assert main(["download", str(tmp_path / "c")]) == 1
    assert f"ERROR {SHARD}" in capsys.readouterr().out


def test_cli_download_failure_is_one_line(tmp_path, capsys, monkeypatch):
    import editx.hub as hub

    def offline(repo_id, revision, local_dir):
        raise ConnectionError("Name or service not known\n  (details)")

    monkeypatch.setattr(hub, "_huggingface", offline)
    assert main(["download", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "stepfun-ai/Step-Audio-Tokenizer@" + hub.REVISIONS[TOK] in err and "Name or service not known" in err
    errors = [line for line in err.splitlines() if "INFO" not in line]  # the progress log line stays
    assert len(errors) == 1 and errors[0].startswith("editx: error:") and "Traceback" not in err


def test_modelscope_download_is_not_pinned_to_hugging_face_commits(tmp_path):
    from editx.hub import download_plan

    plan = download_plan(tmp_path, "modelscope")
    assert [rev for _, rev, _ in plan] == [None, None]
    with pytest.raises(ModelFilesError, match="unknown download source"):
        download_plan(tmp_path, "ftp")
