"""Step1 causal LM (the Step-Audio-EditX language model): config, transformer, checkpoint key map.

Architecture facts (from the upstream Hugging Face `modeling_step1.py`, see REFERENCES.md §5):
pre-RMSNorm blocks with the variance taken in fp32, SwiGLU MLP, no biases, no rotary embedding;
position enters only through a square-root ALiBi bias `-slope_h * sqrt(i - j)`; grouped K/V heads
where query head h reads group h // (heads // groups); an untied `lm_head`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from editx.errors import ModelFilesError, ValidationError
from editx.lm import threads

MODEL_TYPE = "step1"
ARCHITECTURE = "Step1ForCausalLM"
# Audio tokens live above the text vocabulary: LM id = AUDIO_TOKEN_OFFSET + mixed id (REFERENCES §4).
AUDIO_TOKEN_OFFSET = 65536
VOCAB_SIZE = 74752  # 65536 text ids + 9216 audio ids in the released checkpoint
INT_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_attention_groups",
              "num_hidden_layers", "vocab_size", "max_seq_len", "bos_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class Step1Config:
    """The fields of the official `config.json` that shape the network (HF `Step1Config`)."""

    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_attention_heads: int = 48
    num_attention_groups: int = 4
    num_hidden_layers: int = 32
    vocab_size: int = VOCAB_SIZE
    rms_norm_eps: float = 1e-5
    max_seq_len: int = 32768
    bos_token_id: int = 1
    eos_token_id: int = 3
    pad_token_id: int = 0
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValidationError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}")
        if self.num_attention_heads % self.num_attention_groups:
            raise ValidationError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_attention_groups {self.num_attention_groups}")
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValidationError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.num_attention_groups * self.head_dim

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_attention_groups

    @classmethod
    def from_name(cls, name: str) -> Step1Config:
        if name not in PRESETS:
            raise ValidationError(f"unknown Step1 preset {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[name]

    @classmethod
    def from_hf_config(cls, data: dict) -> Step1Config:
        """Parse an official `config.json` dict; raises ModelFilesError when it is not a Step1 config."""
        if not isinstance(data, dict):
            raise ModelFilesError("config.json must hold a JSON object")
        archs = data.get("architectures") or []
        if data.get("model_type") != MODEL_TYPE and ARCHITECTURE not in archs:
            raise ModelFilesError(
                f"config.json is not a Step1 config (model_type={data.get('model_type')!r}, "
                f"architectures={archs!r}); point the model dir at Step-Audio-EditX/")
        # Every value the network or the decode loop uses must be stated; only max_seq_len may come
        # from HF's alias max_position_embeddings. torch_dtype is informational (the engine picks).
        required = ("hidden_size", "intermediate_size", "num_attention_heads", "num_attention_groups",
                    "num_hidden_layers", "vocab_size", "rms_norm_eps", "bos_token_id", "eos_token_id",
                    "pad_token_id")
        missing = [k for k in required if k not in data]
        if "max_seq_len" not in data and "max_position_embeddings" not in data:
            missing.append("max_seq_len")
        if missing:
            raise ModelFilesError(f"config.json lacks required keys: {', '.join(missing)}")
        fields = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        if "max_seq_len" not in fields and "max_position_embeddings" in data:
            fields["max_seq_len"] = data["max_position_embeddings"]
        # Rule: a missing `tie_word_embeddings` means an untied head. The released config.json
        # has no such key and the checkpoint carries its own lm_head.weight; HF's PretrainedConfig
        # default (tied) would throw that head away (upstream issue #38). The loader also refuses a
        # config that says `true` next to a checkpoint that carries lm_head.weight.
        tie = fields.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise ModelFilesError(f"config.json: tie_word_embeddings must be true or false, got {tie!r}")
        fields["tie_word_embeddings"] = tie
        eos = fields.get("eos_token_id")
        if isinstance(eos, list):  # HF allows a list; the released model has a single id
            if len(eos) != 1:
                raise ModelFilesError(f"config.json: eos_token_id lists {eos}; the Step1 decoder stops on one id")
            fields["eos_token_id"] = eos[0]
        for name in INT_FIELDS:
            if name in fields and (isinstance(fields[name], bool) or not isinstance(fields[name], int)):
                raise ModelFilesError(f"config.json: {name} must be an integer, got {fields[name]!r}")
        try:
            return cls(**fields)
        except (TypeError, ValidationError) as exc:
            raise ModelFilesError(f"config.json has bad values: {exc}") from exc

    def to_hf_config(self) -> dict:
        """config.json for these sizes with exactly the released file's keys, in its order
        (`tie_word_embeddings` is written only when true: the release has no such key)."""
        data = {
            "architectures": [ARCHITECTURE],
            "auto_map": {"AutoConfig": "configuration_step1.Step1Config",
                         "AutoModelForCausalLM": "modeling_step1.Step1ForCausalLM"},
            "model_type": MODEL_TYPE,
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_attention_groups": self.num_attention_groups,
            "num_hidden_layers": self.num_hidden_layers,
            "max_seq_len": self.max_seq_len,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
        }
        if self.tie_word_embeddings:
            data["tie_word_embeddings"] = True
        data["torch_dtype"] = self.torch_dtype
        return data

    def with_(self, **changes) -> Step1Config:
        return replace(self, **changes)


PRESETS: dict[str, Step1Config] = {
    # The released Step-Audio-EditX LM (3B): REFERENCES §5, mlx-speech config.
    "step-audio-editx": Step1Config(),
    # Fast tests: the real vocab (ids above 65536 are audio tokens), everything else shrunk.
    "tiny": Step1Config(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                        num_attention_groups=2, num_hidden_layers=2),
    # Benchmarks: head_dim 64 and 3 heads per group as in the release, ~165 M parameters.
    "small": Step1Config(hidden_size=768, intermediate_size=2048, num_attention_heads=12,
                         num_attention_groups=4, num_hidden_layers=8),
}


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes (float32): 2^(-8k/n) for the nearest power of two n, then the odd
    powers of 2^(-4/n) for the remaining heads (upstream `build_alibi_cache`)."""
    n = 2 ** math.floor(math.log2(n_heads))
    base = [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]
    extra = [2.0 ** (-4.0 * k / n) for k in range(1, 2 * (n_heads - n), 2)]
    return torch.tensor(base + extra, dtype=torch.float64).to(torch.float32)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias for queries at absolute positions `q_pos` (B, T) over keys 0..kv_len-1.

    bias[b, h, t, j] = -slope_h * sqrt(q_pos[b, t] - j) for j <= q_pos[b, t], -inf above it. Computed
    in fp32 and cast to the compute dtype, as upstream does. Returns (B, H, T, kv_len).
    """
    keys = torch.arange(kv_len, device=q_pos.device)
    dist = (q_pos[:, :, None] - keys).to(torch.float32)  # (B, T, S)
    future = dist < 0
    bias = -slopes.view(1, -1, 1, 1) * dist.clamp_min(0).sqrt_()[:, None]  # (B, H, T, S)
    return bias.masked_fill_(future[:, None], float("-inf")).to(dtype)


SKINNY_ROWS = 16  # decode-sized inputs: at most this many tokens in one call


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x), computed as W @ x^T for a handful of rows on the CPU: MKL's sgemm repacks W for
    x @ W^T with 2..16 rows and runs 2-3x slower than streaming W once (measured on 3072x3072 and
    the 74752-row lm_head), which would make batched decoding no cheaper than serial decoding.
    Runs with every intra-op thread even inside a decode step's `threads.narrow()`."""
    with threads.wide():
        if type(layer) is not nn.Linear or x.device.type != "cpu" or x.numel() > SKINNY_ROWS * x.shape[-1]:
            return layer(x)
        w = layer.weight
        return torch.mm(w, x.reshape(-1, x.shape[-1]).t()).t().reshape(*x.shape[:-1], w.shape[0])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Variance in fp32, scale applied in the input dtype (upstream StepRMSNorm).
        var = x.float().pow(2).mean(-1, keepdim=True)
        return x * var.add_(self.eps).rsqrt_().to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.n_heads, self.n_groups, self.head_dim = cfg.num_attention_heads, cfg.num_attention_groups, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=False)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, k_layer: torch.Tensor, v_layer: torch.Tensor,
                write_index: torch.Tensor, read_rows: slice | torch.Tensor, kv_len: int) -> torch.Tensor:
        B, T, C = x.shape  # (B, T, C)
        G, D, r = self.n_groups, self.head_dim, self.n_heads // self.n_groups
        # Write this chunk's keys/values at each row's own slots (padding goes to the scratch slot):
        # one index_copy_ into the layer's flat (rows * G * slots, D) view, rows (b, t, g) in order.
        k_layer.view(-1, D).index_copy_(0, write_index, linear(self.k_proj, x).reshape(B * T * G, D))
        v_layer.view(-1, D).index_copy_(0, write_index, linear(self.v_proj, x).reshape(B * T * G, D))
        # Views for a slice of rows, a gather for a row-id tensor: (B, G, S, D)
        keys, values = k_layer[read_rows, :, :kv_len], v_layer[read_rows, :, :kv_len]
        # Heads h = g*r + i share group g: fold the r heads of a group into the query axis so the
        # grouped K/V are used without being repeated.
        q = linear(self.q_proj, x).view(B, T, G, r, D).permute(0, 2, 3, 1, 4).reshape(B, G, r * T, D)
        mask = bias.view(B, G, r * T, kv_len)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, G, r*T, D)
        out = out.view(B, G, r, T, D).permute(0, 3, 1, 2, 4).reshape(B, T, C)
        return linear(self.o_proj, out)


class MLP(nn.Module):
    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.down_proj, F.silu(linear(self.gate_proj, x)) * linear(self.up_proj, x))


class Layer(nn.Module):
    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, bias, k_layer, v_layer, write_index, read_rows, kv_len):
        h = self.self_attn(self.input_layernorm(x), bias, k_layer, v_layer, write_index, read_rows, kv_len)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))


class Step1Model(nn.Module):
    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        # Weights always come from a checkpoint: skip Embedding's normal_ init (on the meta device its
        # first call costs seconds of lazy set-up).
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Step1ForCausalLM(nn.Module):
    """The transformer. State-dict names equal the released checkpoint's keys (see `checkpoint_keys`).

    `forward` runs one chunk of tokens for a set of cache rows: every row has its own absolute
    positions, so rows of different lengths (and restored prefixes) batch together exactly.
    """

    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.config = cfg
        self.model = Step1Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("alibi_slopes", alibi_slopes(cfg.num_attention_heads), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute non-checkpoint buffers (after building on the meta device)."""
        device = self.lm_head.weight.device
        self.alibi_slopes = alibi_slopes(self.config.num_attention_heads).to(device)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache, rows: slice | torch.Tensor,
                slots: torch.Tensor, kv_len: int) -> torch.Tensor:
        """tokens, positions, slots: (B, T) int64; rows: the B cache rows (a slice keeps cache reads
        as views; a tensor of row ids gathers); returns the final-normed hidden states (B, T, C).

        `positions` are the tokens' absolute positions (ALiBi distances use them); `slots` are where
        their K/V go in the cache (= positions, or the cache's scratch slot for padding).
        """
        B, T = tokens.shape
        x = self.model.embed_tokens(tokens)
        if T == 1:  # decode: the bias row from the cache's sqrt table, no (B, H, T, S) distance matrix
            bias = cache.decode_bias(self.alibi_slopes, positions[:, 0].tolist(), kv_len, x.dtype)
        else:
            bias = alibi_bias(self.alibi_slopes, positions, kv_len, x.dtype)  # (B, H, T, S), shared by layers
        if isinstance(rows, slice):
            row_ids = torch.arange(rows.start or 0, (rows.start or 0) + B, device=tokens.device)
        else:
            row_ids = rows
        G, slots_per_row = self.config.num_attention_groups, cache.k[0].shape[2]
        groups = torch.arange(G, device=tokens.device)
        # Flat row of (row b, group g, slot s) in a layer's (rows * G * slots, D) view, ordered (b, t, g)
        write_index = ((row_ids[:, None, None] * G + groups) * slots_per_row + slots[:, :, None]).reshape(-1)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, bias, cache.k[i], cache.v[i], write_index, rows, kv_len)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits in fp32 (HF casts them to fp32 before the logits processors)."""
        return linear(self.lm_head, hidden).float()


def checkpoint_keys(cfg: Step1Config) -> dict[str, str]:
    """Explicit map from released checkpoint key to our parameter name (they coincide by design)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + f"self_attn.{n}_proj.weight" for n in "qkvo"]
        names += [p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    return {n: n for n in names}
