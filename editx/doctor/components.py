"""The per-component checks behind `editx doctor`: files present, headers whole, keys and shapes through
the loaders' own rules (on the meta device), and the config values the code depends on."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from editx.doctor import COSYVOICE_DIRNAME, EDITX_DIRNAME, FIX_DOWNLOAD, TOKENIZER_DIRNAME, Finding
from editx.doctor.headers import npy_header, onnx_graph_inputs, torch_archive_index
from editx.errors import EditxError
from editx.lm.loader import read_header
from editx.tokenizer import FUNASR_SUBDIR, KMEANS_FILE, SPEECH_TOKENIZER_FILE
from editx.torchfile import is_lfs_pointer

log = logging.getLogger(__name__)

COSY = f"{EDITX_DIRNAME}/{COSYVOICE_DIRNAME}"
PARA = f"{TOKENIZER_DIRNAME}/{FUNASR_SUBDIR}"
# Every file the loaders open, as released; a tuple means "one of these".
REQUIRED: tuple[str | tuple[str, ...], ...] = (
    f"{PARA}/config.yaml", f"{PARA}/model.pt", f"{PARA}/am.mvn",
    f"{TOKENIZER_DIRNAME}/{KMEANS_FILE}", f"{TOKENIZER_DIRNAME}/{SPEECH_TOKENIZER_FILE}",
    f"{EDITX_DIRNAME}/config.json", f"{EDITX_DIRNAME}/tokenizer_config.json",
    TEXT_TOKENIZER := (f"{EDITX_DIRNAME}/tokenizer.model", f"{EDITX_DIRNAME}/tokenizer.json"),
    LM_WEIGHTS := (f"{EDITX_DIRNAME}/model.safetensors.index.json", f"{EDITX_DIRNAME}/model.safetensors"),
    f"{COSY}/cosyvoice.yaml", f"{COSY}/flow.pt", f"{COSY}/hift.pt", f"{COSY}/campplus.onnx",
)
FIX_SAME_DOWNLOAD = "the files come from different downloads or revisions: re-run `editx download DIR`"


class _Checker:
    def __init__(self, root: Path, checked: list[str]) -> None:
        self.root, self.checked, self.findings = root, checked, []
        self.bad: set[str] = set()

    def add(self, where: str, problem: str, fix: str = FIX_DOWNLOAD, severity: str = "error") -> None:
        self.findings.append(Finding(where, problem, fix, severity))
        if severity == "error":
            self.bad.add(where)

    def run(self, where: str, needs: tuple[str, ...], fn: Callable[[], None], fix: str = FIX_DOWNLOAD) -> None:
        """Run one check unless a file it needs already has a finding; its error becomes a finding."""
        if any(n in self.bad or n not in self.checked for n in needs):
            return
        try:
            fn()
        except EditxError as exc:
            self.add(where, str(exc).replace(str(self.root) + "/", ""), fix)
        except Exception as exc:  # a file so broken that a reader failed in an unplanned way
            log.debug("doctor check of %s failed", where, exc_info=True)
            self.add(where, f"could not be checked ({type(exc).__name__}: {exc})", fix)

    def files(self) -> None:
        for want in REQUIRED + self.shards():
            options = want if isinstance(want, tuple) else (want,)
            present = [o for o in options if (self.root / o).is_file()]
            if not present:
                self.add(options[0], "missing" + (f" (or {', '.join(options[1:])})" if len(options) > 1 else ""))
                continue
            for rel in present:
                path = self.root / rel
                if is_lfs_pointer(path):
                    self.add(rel, "is a Git LFS pointer, not the file (cloned without git-lfs)",
                             "run `git lfs pull` in that folder, or `editx download DIR`")
                elif path.stat().st_size == 0:
                    self.add(rel, "is empty")
                else:
                    self.checked.append(rel)


    def shards(self) -> tuple[str, ...]:
        """The weight shards model.safetensors.index.json names (a broken index is the LM check's finding)."""
        try:
            weight_map = json.loads((self.root / LM_WEIGHTS[0]).read_text(encoding="utf-8"))["weight_map"]
            return tuple(sorted({f"{EDITX_DIRNAME}/{name}" for name in weight_map.values()}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return ()


def check_all(root: Path, checked: list[str]) -> list[Finding]:
    c = _Checker(root, checked)
    c.files()
    lm = root / EDITX_DIRNAME
    state: dict = {}
    c.run(f"{EDITX_DIRNAME}/config.json", (f"{EDITX_DIRNAME}/config.json",), lambda: _lm_config(lm, state))
    weights = next((w for w in LM_WEIGHTS if w in checked), LM_WEIGHTS[0])
    shards = c.shards() or (weights,)
    for shard in shards:
        c.run(shard, (shard,), lambda shard=shard: read_header(root / shard))
    # key/shape findings name the shard in their text; they are filed under it when there is one
    c.run(shards[0] if len(shards) == 1 else weights, (f"{EDITX_DIRNAME}/config.json", weights) + shards,
          lambda: _lm_weights(lm, state["lm"]), FIX_SAME_DOWNLOAD)
    spm = next((t for t in TEXT_TOKENIZER if t in checked), TEXT_TOKENIZER[0])
    c.run(spm, (f"{EDITX_DIRNAME}/config.json", f"{EDITX_DIRNAME}/tokenizer_config.json", spm),
          lambda: _text_tokenizer(c, lm, state["lm"]))
    c.run(f"{PARA}/config.yaml", (f"{PARA}/config.yaml",), lambda: _para_config(root / PARA, state))
    c.run(f"{PARA}/am.mvn", (f"{PARA}/config.yaml", f"{PARA}/am.mvn"), lambda: _cmvn(root / PARA, state["para"]))
    c.run(f"{PARA}/model.pt", (f"{PARA}/config.yaml", f"{PARA}/model.pt"),
          lambda: _para_weights(root / PARA, state["para"]), FIX_SAME_DOWNLOAD)
    kmeans = f"{TOKENIZER_DIRNAME}/{KMEANS_FILE}"
    c.run(kmeans, (f"{PARA}/config.yaml", kmeans), lambda: _centroids(root / kmeans, state["para"]))
    s3 = f"{TOKENIZER_DIRNAME}/{SPEECH_TOKENIZER_FILE}"
    c.run(s3, (s3,), lambda: _speech_onnx(root / s3))
    c.run(f"{COSY}/cosyvoice.yaml", (f"{COSY}/cosyvoice.yaml",), lambda: _cosy_config(root / COSY, state))
    for name, fn in (("flow.pt", _flow), ("hift.pt", _hift)):
        c.run(f"{COSY}/{name}", (f"{COSY}/cosyvoice.yaml", f"{COSY}/{name}"),
              lambda fn=fn, name=name: fn(root / COSY / name, state["cosy"]), FIX_SAME_DOWNLOAD)
    c.run(f"{COSY}/campplus.onnx", (f"{COSY}/campplus.onnx",), lambda: _campplus(root / COSY / "campplus.onnx"))
    return c.findings


# ---- Step-Audio-EditX: LM + text tokenizer -----------------------------------------------------------------

def _lm_config(lm: Path, state: dict) -> None:
    from editx.errors import ModelFilesError
    from editx.lm import prompts
    from editx.lm.loader import read_config
    from editx.lm.model import AUDIO_TOKEN_OFFSET
    from editx.tokenizer.speech import MIXED_VOCAB

    cfg = read_config(lm)
    if cfg.vocab_size < AUDIO_TOKEN_OFFSET + MIXED_VOCAB:
        raise ModelFilesError(f"config.json: vocab_size {cfg.vocab_size} has no room for the {MIXED_VOCAB} audio "
                              f"ids from {AUDIO_TOKEN_OFFSET}; this is not the Step-Audio-EditX LM")
    if (cfg.bos_token_id, cfg.eos_token_id) != (prompts.BOS_ID, prompts.EOT_ID):
        raise ModelFilesError(f"config.json: bos/eos ids are {cfg.bos_token_id}/{cfg.eos_token_id}; the prompts "
                              f"use {prompts.BOS_ID}/{prompts.EOT_ID} as released")
    state["lm"] = cfg


def _lm_weights(lm: Path, cfg) -> None:
    from editx.lm.loader import plan_state, read_headers

    plan_state(cfg, read_headers(lm))


def _text_tokenizer(c: _Checker, lm: Path, cfg) -> None:
    from editx.errors import ModelFilesError
    from editx.lm.text_tokenizer import FAST_FILE, SPM_FILE

    key = _stat_key(lm)
    if key not in _FACTS:
        _FACTS.clear()  # one folder's facts at a time
        _FACTS[key] = _tokenizer_facts(lm)
    source, vocab_size, ids = _FACTS[key]
    if source == FAST_FILE:
        c.add(f"{EDITX_DIRNAME}/{FAST_FILE}", f"not part of the release; it is used in place of {SPM_FILE}",
              f"delete it to use the released {SPM_FILE}", severity="note")
    if vocab_size != cfg.vocab_size:
        raise ModelFilesError(f"{source} has {vocab_size} tokens, config.json says vocab_size {cfg.vocab_size}")
    for token, (got, want) in ids.items():
        if got != want:
            raise ModelFilesError(f"{source}: {token} has id {got}; the prompts need {want}")


_FACTS: dict[tuple, tuple] = {}


def _stat_key(lm: Path) -> tuple:
    """The tokenizer files' identity (device, inode, size, mtime): unchanged files are parsed once per process."""
    out: list = []
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        try:
            st = (lm / name).stat()
            out.append((name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, None))
    return tuple(out)


def _tokenizer_facts(lm: Path) -> tuple[str, int, dict[str, tuple[int, int]]]:
    """(file used, vocabulary size, {token: (id, id the prompts need)}) of the folder's text tokenizer."""
    from editx.lm import prompts
    from editx.lm.model import AUDIO_TOKEN_OFFSET
    from editx.lm.text_tokenizer import TextTokenizer
    from editx.tokenizer.speech import MIXED_VOCAB

    tok = TextTokenizer.load(lm)
    wanted = {"<s>": prompts.BOS_ID, "<|EOT|>": prompts.EOT_ID, "<|BOT|>": prompts.BOT_ID,
              "<audio_0>": AUDIO_TOKEN_OFFSET, f"<audio_{MIXED_VOCAB - 1}>": AUDIO_TOKEN_OFFSET + MIXED_VOCAB - 1}
    return tok.source.name, tok.vocab_size, {t: (tok.token_to_id(t), want) for t, want in wanted.items()}


# ---- Step-Audio-Tokenizer ----------------------------------------------------------------------------------

def _para_config(model_dir: Path, state: dict) -> None:
    from editx.tokenizer.paraformer import ParaformerConfig

    state["para"] = ParaformerConfig.from_yaml(model_dir / "config.yaml")


def _cmvn(model_dir: Path, cfg) -> None:
    from editx.tokenizer.frontend import Cmvn

    Cmvn.from_file(model_dir / "am.mvn", cfg.input_size)


def _para_weights(model_dir: Path, cfg) -> None:
    from editx.tokenizer.paraformer import build_encoder, state_from_checkpoint

    path = model_dir / "model.pt"
    state = state_from_checkpoint(torch_archive_index(path), path.name)
    build_encoder(cfg, state, source=Path("model.pt"), device="meta")


def _centroids(path: Path, cfg) -> None:
    from editx.errors import ModelFilesError
    from editx.tokenizer.paraformer import VQ02_CODEBOOK_SIZE

    shape, dtype = npy_header(path)
    if shape != (VQ02_CODEBOOK_SIZE, cfg.output_size) or dtype.kind != "f":
        raise ModelFilesError(f"{path.name} holds {dtype} {shape}; expected float ({VQ02_CODEBOOK_SIZE}, "
                              f"{cfg.output_size}) k-means centroids for this encoder")


def _speech_onnx(path: Path) -> None:
    from editx.tokenizer.speech import check_inputs

    check_inputs(onnx_graph_inputs(path), path.name)


# ---- CosyVoice-300M-25Hz -----------------------------------------------------------------------------------

def _cosy_config(cosy: Path, state: dict) -> None:
    from editx.decoder import read_config

    state["cosy"] = read_config(cosy)


def _flow(path: Path, cfg) -> None:
    from editx.decoder.flow import CosyVoiceFlow, flow_state, load_flow_state

    state = flow_state(torch_archive_index(path), path.name)
    with torch.device("meta"):
        model = CosyVoiceFlow(cfg.flow)
    load_flow_state(model, state, source=path.name)


def _hift(path: Path, cfg) -> None:
    from editx.decoder.vocoder import HiFTConfig, HiFTGenerator, check_hift_state
    from editx.errors import ModelFilesError

    state = torch_archive_index(path)
    if not isinstance(state, dict):
        raise ModelFilesError(f"{path.name} does not hold a state dict")
    with torch.device("meta"):
        model = HiFTGenerator(HiFTConfig.from_yaml(dict(cfg.hift)))
    check_hift_state(model, state, path.name)


def _campplus(path: Path) -> None:
    from editx.decoder.speaker import check_inputs

    check_inputs(onnx_graph_inputs(path), path.name)
