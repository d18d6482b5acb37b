"""CosyVoice-300M-25Hz `cosyvoice.yaml` read as data: tag-tolerant YAML loading and flow config dataclasses.

The official file is written for hyperpyyaml (`!new:module.Class`, `!name:`, `!apply:`, `!ref <key>`).
We never construct objects or import modules from it: `!new:`/`!name:` nodes become `TaggedDict`s (plain
dicts that remember their tag), `!apply:` nodes become None, and `!ref`/`!copy` are resolved to the
referenced value. Defaults follow the upstream constructor signatures (stepvocoder/cosyvoice2
flow/flow.py, flow/flow_matching.py, flow/decoder_dit.py, transformer/upsample_encoder_v2.py), so a
key the YAML leaves out means what it means upstream.
"""

from __future__ import annotations

import ast
import copy
import logging
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from editx.errors import ModelFilesError

log = logging.getLogger(__name__)

CONFIG_NAME = "cosyvoice.yaml"
MEL_BINS = 80  # flow output_size: the mel the vocoder consumes


class TaggedDict(dict):
    """A plain dict that also remembers the hyperpyyaml tag it was written with (e.g. `!new:a.B`)."""

    def __init__(self, tag: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tag = tag

    @property
    def target(self) -> str:
        """The dotted class/function path after `!new:`/`!name:`."""
        return self.tag.split(":", 1)[1] if ":" in self.tag else ""

    def __deepcopy__(self, memo: dict) -> TaggedDict:
        return TaggedDict(self.tag, copy.deepcopy(dict(self), memo))


@dataclass(frozen=True)
class _Ref:
    expr: str  # e.g. "<sample_rate>", "<mel_conf[n_fft]> // 2"


class _Loader(yaml.SafeLoader):
    """SafeLoader plus hyperpyyaml tags; never imports or calls anything."""


# YAML 1.1 (PyYAML) reads `1e-06` as a string; hyperpyyaml (ruamel, YAML 1.2) reads a float.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


def _construct_object(loader: yaml.SafeLoader, suffix: str, node: yaml.Node, prefix: str) -> Any:
    tag = f"{prefix}{suffix}"
    if isinstance(node, yaml.MappingNode):
        return TaggedDict(tag, loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):  # positional arguments: kept as a list under "args"
        return TaggedDict(tag, {"args": loader.construct_sequence(node, deep=True)})
    return TaggedDict(tag)


_Loader.add_multi_constructor("!new:", lambda ld, sfx, n: _construct_object(ld, sfx, n, "!new:"))
_Loader.add_multi_constructor("!name:", lambda ld, sfx, n: _construct_object(ld, sfx, n, "!name:"))
_Loader.add_multi_constructor("!apply:", lambda ld, sfx, n: (_construct_plain(ld, n), None)[1])
_Loader.add_constructor("!ref", lambda ld, n: _Ref(str(ld.construct_scalar(n))))
_Loader.add_constructor("!copy", lambda ld, n: _Ref(str(ld.construct_scalar(n))))
_Loader.add_constructor("!tuple", lambda ld, n: tuple(_construct_plain(ld, n) or ()))
_Loader.add_constructor("!PLACEHOLDER", lambda ld, n: None)
# Any other tag (`!include:`, `!module:`, ...): keep the plain value, ignore the tag.
_Loader.add_multi_constructor("!", lambda ld, sfx, n: _construct_plain(ld, n))

_REF = re.compile(r"<([^<>]+)>")
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _lookup(root: Mapping, path: str, source: str) -> Any:
    # hyperpyyaml reference syntax: <a>, <a[b]>, <a[b][0]>, also dotted <a.b>
    parts = [p for p in re.split(r"[.\[\]]", path.strip()) if p]
    node: Any = root
    for part in parts:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.lstrip("-").isdigit():
            node = node[int(part)]
        else:
            raise ModelFilesError(f"{source}: `!ref <{path}>` points at nothing; the file is not a valid "
                                  "CosyVoice config (re-download cosyvoice.yaml)")
    return node


def _eval_arith(text: str) -> Any:
    def ev(n: ast.AST) -> Any:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in _ARITH:
            return _ARITH[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            return -ev(n.operand) if isinstance(n.op, ast.USub) else ev(n.operand)
        raise ValueError("not arithmetic")

    return ev(ast.parse(text, mode="eval"))


def _resolve(value: Any, root: Mapping, source: str, depth: int = 0) -> Any:
    if depth > 32:
        raise ModelFilesError(f"{source}: `!ref` chain too deep (circular reference?)")
    if isinstance(value, _Ref):
        expr = value.expr.strip()
        whole = _REF.fullmatch(expr)
        if whole:
            target = _lookup(root, whole.group(1), source)
            return _resolve(copy.deepcopy(target), root, source, depth + 1)
        text = _REF.sub(lambda m: str(_resolve(_lookup(root, m.group(1), source), root, source, depth + 1)),
                        expr)
        try:
            return _eval_arith(text)
        except (ValueError, SyntaxError, ZeroDivisionError, TypeError):
            return text  # string interpolation, e.g. `!ref <root>/sub`
    if isinstance(value, TaggedDict):
        return TaggedDict(value.tag, {k: _resolve(v, root, source, depth) for k, v in value.items()})
    if isinstance(value, dict):
        return {k: _resolve(v, root, source, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, source, depth) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve(v, root, source, depth) for v in value)
    return value


def load_yaml_data(text: str, source: str = CONFIG_NAME) -> dict[str, Any]:
    """Parse hyperpyyaml text into plain data (see module docstring); raises ModelFilesError."""
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ModelFilesError(f"{source} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelFilesError(f"{source} must be a YAML mapping at the top level")
    return _resolve(raw, raw, source)


def dump_yaml_data(data: Mapping[str, Any]) -> str:
    """Write data back as hyperpyyaml text; `TaggedDict`s keep their tags (used by the fixtures)."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _tagged(dumper: yaml.SafeDumper, value: TaggedDict) -> yaml.Node:
        if set(value) == {"args"}:
            return dumper.represent_sequence(value.tag, value["args"])
        return dumper.represent_mapping(value.tag, dict(value))

    _Dumper.add_representer(TaggedDict, _tagged)
    _Dumper.add_representer(tuple, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", list(v)))
    return yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)


# ----------------------------------------------------------------------------- flow configuration

def _get(section: Mapping, key: str, default: Any, kind: type, where: str) -> Any:
    value = section.get(key, default)
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int and (isinstance(value, bool) or float(value) != int(value)):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ModelFilesError(f"{CONFIG_NAME}: {where}.{key} must be {kind.__name__}, got {value!r}") from exc


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ModelFilesError(f"{CONFIG_NAME}: {message}; this decoder implements the Step-Audio-EditX "
                              "CosyVoice-300M-25Hz flow only")


def _section(parent: Mapping, key: str, where: str) -> Mapping:
    value = parent.get(key)
    if not isinstance(value, Mapping):
        raise ModelFilesError(f"{CONFIG_NAME}: {where}.{key} is missing or not a mapping")
    return value


_ACTIVATIONS = ("swish", "relu", "gelu", "tanh", "selu", "hardtanh")


@dataclass(frozen=True)
class EncoderConfig:
    """UpsampleConformerEncoderV2 (upstream constructor defaults)."""

    input_size: int = 512
    output_size: int = 256
    pre_lookahead_len: int = 3
    num_blocks: int = 6
    num_up_blocks: int = 4
    up_stride: int = 2
    up_scale_factor: int = 2
    attention_heads: int = 4
    linear_units: int = 2048
    key_bias: bool = True
    activation: str = "swish"

    @classmethod
    def from_section(cls, s: Mapping) -> EncoderConfig:
        w = "flow.encoder"
        _require(s.get("input_layer", "linear") == "linear", f"{w}.input_layer must be 'linear'")
        _require(s.get("pos_enc_layer_type", "rel_pos_espnet") == "rel_pos_espnet",
                 f"{w}.pos_enc_layer_type must be 'rel_pos_espnet'")
        _require(s.get("selfattention_layer_type", "rel_selfattn") == "rel_selfattn",
                 f"{w}.selfattention_layer_type must be 'rel_selfattn'")
        _require(s.get("normalize_before", True) is True, f"{w}.normalize_before must be true")
        act = s.get("activation_type", "swish")
        _require(act in _ACTIVATIONS, f"{w}.activation_type {act!r} is not one of {_ACTIVATIONS}")
        cfg = cls(
            input_size=_get(s, "input_size", None, int, w),
            output_size=_get(s, "output_size", 256, int, w),
            pre_lookahead_len=_get(s, "pre_lookahead_len", 3, int, w),
            num_blocks=_get(s, "num_blocks", 6, int, w),
            num_up_blocks=_get(s, "num_up_blocks", 4, int, w),
            up_stride=_get(s, "up_stride", 2, int, w),
            up_scale_factor=_get(s, "up_scale_factor", _get(s, "up_stride", 2, int, w), int, w),
            attention_heads=_get(s, "attention_heads", 4, int, w),
            linear_units=_get(s, "linear_units", 2048, int, w),
            key_bias=_get(s, "key_bias", True, bool, w),
            activation=act,
        )
        # up_embed is built with input_size inputs but is fed output_size channels.
        _require(cfg.input_size == cfg.output_size, f"{w}.input_size must equal output_size")
        _require(cfg.up_scale_factor == cfg.up_stride, f"{w}.up_scale_factor must equal up_stride")
        _require(cfg.output_size % cfg.attention_heads == 0, f"{w}.output_size must divide by attention_heads")
        _require(cfg.pre_lookahead_len >= 1, f"{w}.pre_lookahead_len must be >= 1")
        return cfg


@dataclass(frozen=True)
class EstimatorConfig:
    """The CFM velocity estimator: decoder_dit.DiT (upstream constructor defaults)."""

    in_channels: int = 320
    out_channels: int = MEL_BINS
    hidden_size: int = 256
    depth: int = 28
    num_heads: int = 8
    head_dim: int = 64
    mlp_ratio: float = 4.0

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @classmethod
    def from_section(cls, s: Mapping) -> EstimatorConfig:
        w = "flow.decoder.estimator"
        return cls(
            in_channels=_get(s, "in_channels", None, int, w),
            out_channels=_get(s, "out_channels", None, int, w),
            hidden_size=_get(s, "hidden_size", 256, int, w),
            depth=_get(s, "depth", 28, int, w),
            num_heads=_get(s, "num_heads", 8, int, w),
            head_dim=_get(s, "head_dim", 64, int, w),
            mlp_ratio=_get(s, "mlp_ratio", 4.0, float, w),
        )


@dataclass(frozen=True)
class FlowConfig:
    """CausalMaskedDiffWithXvec with a DualCodebookEmbedding, an UpsampleConformerEncoderV2 and a DiT CFM."""

    encoder: EncoderConfig
    estimator: EstimatorConfig
    input_size: int = 512
    output_size: int = MEL_BINS
    spk_embed_dim: int = 192
    vocab_size: int = 5121
    embed_vocab_size: int = 5121  # rows of the shared DualCodebookEmbedding table
    cfg_rate: float = 0.7  # CausalConditionalCFM.inference_cfg_rate

    @property
    def embed_dim(self) -> int:
        return self.input_size // 2  # each codebook column gets half of input_size

    @property
    def up_rate(self) -> int:
        return self.encoder.up_stride

    @classmethod
    def from_section(cls, s: Mapping) -> FlowConfig:
        w = "flow"
        _require(s.get("output_type", "mel") == "mel", "flow.output_type must be 'mel'")
        emb = s.get("input_embedding")
        _require(isinstance(emb, Mapping) and "DualCodebookEmbedding" in getattr(emb, "target", "DualCodebook"),
                 "flow.input_embedding must be a DualCodebookEmbedding")
        decoder = _section(s, "decoder", w)
        cfg = cls(
            encoder=EncoderConfig.from_section(_section(s, "encoder", w)),
            estimator=EstimatorConfig.from_section(_section(decoder, "estimator", "flow.decoder")),
            input_size=_get(s, "input_size", 512, int, w),
            output_size=_get(s, "output_size", MEL_BINS, int, w),
            spk_embed_dim=_get(s, "spk_embed_dim", 192, int, w),
            vocab_size=_get(s, "vocab_size", 5121, int, w),
            embed_vocab_size=_get(emb, "vocab_size", None, int, "flow.input_embedding"),
            cfg_rate=_get(decoder, "inference_cfg_rate", 0.7, float, "flow.decoder"),
        )
        emb_in = _get(emb, "input_size", None, int, "flow.input_embedding")
        _require(emb_in == cfg.input_size, "flow.input_embedding.input_size must equal flow.input_size")
        _require(cfg.input_size % 2 == 0, "flow.input_size must be even (two codebook halves)")
        _require(cfg.encoder.input_size == cfg.input_size, "flow.encoder.input_size must equal flow.input_size")
        _require(cfg.output_size == MEL_BINS, f"flow.output_size must be {MEL_BINS}")
        est = cfg.estimator
        _require(est.out_channels == cfg.output_size, "flow.decoder.estimator.out_channels must equal output_size")
        # the estimator input is [x, mu, speaker, prompt condition], each output_size channels
        _require(est.in_channels == 4 * cfg.output_size, "flow.decoder.estimator.in_channels must be 4*output_size")
        # flow ids reach 1024 (vq02 pad) and 1025..5120 (vq06 + 1025): see editx.decoder.tokens
        _require(cfg.embed_vocab_size >= 5121, "flow.input_embedding.vocab_size must be >= 5121")
        return cfg


@dataclass(frozen=True)
class MelConfig:
    """`mel_conf`: the Matcha mel the prompt features use (upstream matcha/audio.py argument names)."""

    n_fft: int = 1920
    num_mels: int = MEL_BINS
    sampling_rate: int = 24000
    hop_size: int = 480
    win_size: int = 1920
    fmin: float = 0.0
    fmax: float = 8000.0
    center: bool = False

    @classmethod
    def from_section(cls, s: Mapping) -> MelConfig:
        w = "mel_conf"
        sr = _get(s, "sampling_rate", 24000, int, w)
        fmax = s.get("fmax", 8000.0)  # librosa reads None as Nyquist
        return cls(n_fft=_get(s, "n_fft", 1920, int, w), num_mels=_get(s, "num_mels", MEL_BINS, int, w),
                   sampling_rate=sr, hop_size=_get(s, "hop_size", 480, int, w),
                   win_size=_get(s, "win_size", 1920, int, w), fmin=_get(s, "fmin", 0.0, float, w),
                   fmax=sr / 2 if fmax is None else _get(s, "fmax", 8000.0, float, w),
                   center=_get(s, "center", False, bool, w))


@dataclass(frozen=True)
class DecoderConfig:
    """Everything `cosyvoice.yaml` says about the decoder; `hift` is handed raw to the vocoder."""

    flow: FlowConfig
    mel: MelConfig
    hift: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> DecoderConfig:
        hift = data.get("hift")
        if not isinstance(hift, Mapping):
            raise ModelFilesError(f"{CONFIG_NAME}: the `hift` section is missing or not a mapping")
        mel = data.get("mel_conf")
        return cls(
            flow=FlowConfig.from_section(_section(data, "flow", "<top>")),
            mel=MelConfig.from_section(mel) if isinstance(mel, Mapping) else MelConfig(),
            hift=hift,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> DecoderConfig:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ModelFilesError(f"{path} not found: CosyVoice-300M-25Hz/ must hold {CONFIG_NAME} "
                                  "(download the Step-Audio-EditX model folder completely)")
        return cls.from_data(load_yaml_data(path.read_text(encoding="utf-8"), source=str(path)))
