"""HiFT vocoder: 80-bin CosyVoice mel (50 Hz) -> 24 kHz waveform via an NSF source and an iSTFT head.

Follows the generator that Step-Audio-EditX's CosyVoice-300M-25Hz decoder runs
(stepfun-ai/Step-Audio-EditX `stepvocoder/cosyvoice2/hifigan/generator.py`: HiFTGenerator with
SourceModuleHnNSF2/SineGen2, Snake resblocks; `f0_predictor.py`: ConvRNNF0Predictor). Module and
parameter names equal the official `hift.pt` keys, except that weight-normalised convolutions are
stored there as (g, v) pairs and are folded into one plain weight when loading.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from editx.errors import ModelFilesError, ValidationError, name_some
from editx.torchfile import load_torch_file

log = logging.getLogger(__name__)

SNAKE_EPS = 1e-9  # activation.py Snake: no_div_by_zero
MAGNITUDE_CLIP = 1e2  # generator.py _istft clips the predicted magnitude here
FINAL_LRELU_SLOPE = 0.01  # the last leaky ReLU before conv_post uses torch's default slope, not lrelu_slope
F0_CONV_LAYERS = 5  # ConvRNNF0Predictor: five k=3 convs, each followed by ELU

# Streaming overlap (cli/cosyvoice.py CosyVoice_stream_impl_): 8 mel frames of context are carried.
STREAM_MEL_CACHE = 8


@dataclass(frozen=True)
class HiFTConfig:
    """Constructor arguments of upstream HiFTGenerator (+ its ConvRNNF0Predictor); defaults are upstream's."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    n_fft: int = 16  # istft_params.n_fft
    hop_len: int = 4  # istft_params.hop_len
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_num_class: int = 1  # f0_predictor.num_class
    f0_in_channels: int = 80  # f0_predictor.in_channels
    f0_cond_channels: int = 512  # f0_predictor.cond_channels

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per mel frame: prod(upsample_rates) * hop_len (8*5*3*4 = 480 at 24 kHz)."""
        return math.prod(self.upsample_rates) * self.hop_len

    @classmethod
    def from_yaml(cls, section: dict) -> HiFTConfig:
        """Build from the `hift` section of cosyvoice.yaml parsed as data (constructor kwargs)."""
        if not isinstance(section, dict):
            raise ModelFilesError(f"cosyvoice.yaml: the hift section must be a mapping, got {type(section).__name__}")
        known = {f.name for f in fields(cls)} - {"n_fft", "hop_len", "f0_num_class", "f0_in_channels",
                                                  "f0_cond_channels"}
        kwargs: dict = {}
        for key, value in section.items():
            if not str(key).isidentifier() or str(key).startswith("_"):
                continue  # tag metadata of the yaml-as-data loader (class path), not a constructor argument
            if key == "istft_params":
                params = _mapping(value, "hift.istft_params")
                kwargs["n_fft"] = int(params.get("n_fft", cls.n_fft))
                kwargs["hop_len"] = int(params.get("hop_len", cls.hop_len))
            elif key == "f0_predictor":
                params = _mapping(value, "hift.f0_predictor")
                kwargs["f0_num_class"] = int(params.get("num_class", cls.f0_num_class))
                kwargs["f0_in_channels"] = int(params.get("in_channels", cls.f0_in_channels))
                kwargs["f0_cond_channels"] = int(params.get("cond_channels", cls.f0_cond_channels))
            elif key in known:
                kwargs[key] = _coerce(key, value, getattr(cls, key))
            else:
                raise ModelFilesError(f"cosyvoice.yaml: unknown hift argument {key!r}; "
                                      f"expected some of {sorted(known | {'istft_params', 'f0_predictor'})}")
        if "f0_predictor" not in section:
            raise ModelFilesError("cosyvoice.yaml: the hift section has no f0_predictor; the official file "
                                  "builds a ConvRNNF0Predictor there")
        return cls(**kwargs)


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ModelFilesError(f"cosyvoice.yaml: {where} must be a mapping, got {value!r}")
    return value


def _coerce(key: str, value, default):
    try:
        if isinstance(default, tuple):
            if default and isinstance(default[0], tuple):
                return tuple(tuple(int(v) for v in row) for row in value)
            return tuple(int(v) for v in value)
        return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise ModelFilesError(f"cosyvoice.yaml: hift.{key} has an unusable value {value!r} ({exc})") from None


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha with a per-channel alpha (linear scale)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        alpha = self.alpha[None, :, None]
        return x + (1.0 / (alpha + SNAKE_EPS)) * torch.sin(x * alpha).pow(2)


class ResBlock(nn.Module):
    """Per dilation: Snake -> dilated conv -> Snake -> conv, added back to the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations)
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        for act1, conv1, act2, conv2 in zip(self.activations1, self.convs1, self.activations2, self.convs2):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class ConvRNNF0Predictor(nn.Module):
    """Mel -> F0 in Hz per frame: five conv+ELU layers, a linear head, absolute value."""

    def __init__(self, in_channels: int, cond_channels: int, num_class: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(F0_CONV_LAYERS):
            layers += [nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)  # keys condnet.0, .2, .4, .6, .8 as upstream
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (B, 80, T) -> (B, T)
        h = self.condnet(mel).transpose(1, 2)  # (B, T, C)
        return self.classifier(h).squeeze(-1).abs()


class SourceModuleHnNSF(nn.Module):
    """Holds the harmonic merge layer (`m_source.l_linear`); the sine source itself is `nsf_harmonics`."""

    def __init__(self, nb_harmonics: int) -> None:
        super().__init__()
        self.l_linear = nn.Linear(nb_harmonics + 1, 1)

    def forward(self, harmonics: torch.Tensor) -> torch.Tensor:  # (B, L, H+1) -> (B, L, 1)
        return torch.tanh(self.l_linear(harmonics))


def nsf_harmonics(f0: torch.Tensor, multipliers: torch.Tensor, cfg: HiFTConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """SineGen2: sample-rate F0 (B, L, 1) in Hz -> harmonic sines plus noise (B, L, H+1), float32.

    The phase is integrated at frame rate (linear down/up-sampling by samples_per_frame, as upstream),
    which keeps harmonics continuous across frames. Random draws, in upstream order: an initial phase
    per harmonic (the fundamental's is zero), then Gaussian noise for every sample and harmonic.
    """
    scale = cfg.samples_per_frame
    fn = f0 * multipliers  # (B, L, H+1)
    rad = (fn / cfg.sampling_rate) % 1
    gen_device = generator.device if generator is not None else fn.device
    rand_ini = torch.rand(fn.shape[0], fn.shape[2], generator=generator, device=gen_device).to(fn.device)
    rand_ini[:, 0] = 0
    rad[:, 0, :] = rad[:, 0, :] + rand_ini
    rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / scale, mode="linear").transpose(1, 2)
    phase = torch.cumsum(rad, dim=1) * 2 * math.pi  # (B, T, H+1)
    phase = F.interpolate(phase.transpose(1, 2) * scale, scale_factor=scale, mode="linear").transpose(1, 2)
    sines = torch.sin(phase) * cfg.nsf_alpha
    uv = (f0 > cfg.nsf_voiced_threshold).to(torch.float32)  # (B, L, 1)
    # voiced samples get small noise (sigma); unvoiced ones are pure noise at about the sine amplitude
    noise_amp = uv * cfg.nsf_sigma + (1 - uv) * cfg.nsf_alpha / 3
    # Upstream draws randn_like() of the sines, whose memory is (B, H+1, L)-major (a transposed view);
    # filling a view with that layout consumes the generator exactly as upstream does.
    noise = torch.empty(sines.shape[0], sines.shape[2], sines.shape[1], device=gen_device).transpose(1, 2)
    noise = noise.normal_(generator=generator).to(fn.device)  # (B, L, H+1)
    return sines * uv + noise_amp * noise


class HiFTGenerator(nn.Module):
    """HiFTNet generator (NSF + iSTFTNet); parameter names follow the official hift.pt."""

    def __init__(self, cfg: HiFTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        base = cfg.base_channels
        stft_bins = cfg.n_fft + 2  # real and imaginary parts of n_fft//2 + 1 bins
        self.m_source = SourceModuleHnNSF(cfg.nb_harmonics)
        self.conv_pre = nn.Conv1d(cfg.in_channels, base, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(base // 2**i, base // 2**(i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)))
        # The source STFT enters every upsampling stage, downsampled to that stage's rate.
        down = [1] + list(cfg.upsample_rates[::-1][:-1])
        cum = [math.prod(down[:i + 1]) for i in range(len(down))][::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(zip(cum, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes)):
            ch = base // 2**(i + 1)
            self.source_downs.append(nn.Conv1d(stft_bins, ch, 1) if u == 1
                                     else nn.Conv1d(stft_bins, ch, u * 2, u, padding=u // 2))
            self.source_resblocks.append(ResBlock(ch, k, d))
        self.resblocks = nn.ModuleList(
            ResBlock(base // 2**(i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = nn.Conv1d(base // 2**len(self.ups), stft_bins, 7, padding=3)
        self.f0_predictor = ConvRNNF0Predictor(cfg.f0_in_channels, cfg.f0_cond_channels, cfg.f0_num_class)
        self.init_constants()

    def init_constants(self, device: torch.device | str | None = None) -> None:
        """(Re)build the non-learned buffers; called again after a meta-device build is loaded."""
        device = torch.device("cpu") if device is None else device
        # scipy get_window("hann", n_fft, fftbins=True) is the periodic Hann window
        self.register_buffer("stft_window", torch.hann_window(self.cfg.n_fft, periodic=True, device=device),
                             persistent=False)
        self.register_buffer("harmonic_multipliers",
                             torch.arange(1, self.cfg.nb_harmonics + 2, dtype=torch.float32, device=device),
                             persistent=False)
        # np.hamming(2 * overlap) (symmetric), the cross-fade of consecutive stream chunks
        overlap = STREAM_MEL_CACHE * self.cfg.samples_per_frame
        self.register_buffer("stream_window", torch.hamming_window(
            2 * overlap, periodic=False, dtype=torch.float64, device=device).float(), persistent=False)

    def weight_norm_targets(self) -> list[str]:
        """Modules whose weight is stored weight-normalised (g, v) in the official hift.pt."""
        names = ["conv_pre", "conv_post"] + [f"ups.{i}" for i in range(len(self.ups))]
        for group in ("resblocks", "source_resblocks"):
            for i, block in enumerate(getattr(self, group)):
                names += [f"{group}.{i}.{conv}.{j}" for conv in ("convs1", "convs2") for j in range(len(block.convs1))]
        names += [f"f0_predictor.condnet.{2 * i}" for i in range(F0_CONV_LAYERS)]
        return names

    @torch.inference_mode()
    def source(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel (B, 80, T) -> (F0 (B, T) in Hz, excitation (B, 1, T*samples_per_frame) float32)."""
        f0 = self.f0_predictor(mel).float()  # (B, T)
        f0_up = f0.repeat_interleave(self.cfg.samples_per_frame, dim=1)[:, :, None]  # (B, L, 1) nearest
        harmonics = nsf_harmonics(f0_up, self.harmonic_multipliers, self.cfg, generator)
        weight = self.m_source.l_linear.weight
        merged = self.m_source(harmonics.to(weight.dtype)).float()  # (B, L, 1)
        return f0, merged.transpose(1, 2)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Mel (B, 80, T) + excitation (B, 1, L) -> waveform (B, L) clamped to +-audio_limit."""
        cfg = self.cfg
        spec = torch.stft(source[:, 0].float(), cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.stft_window,
                          return_complex=True)
        spec = torch.view_as_real(spec)  # (B, n_fft//2+1, frames, 2)
        s_stft = torch.cat([spec[..., 0], spec[..., 1]], dim=1).to(mel.dtype)  # (B, n_fft+2, frames)
        x = self.conv_pre(mel)
        n_kernels = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")  # one extra frame so the iSTFT covers L samples
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            xs = self.resblocks[i * n_kernels](x)
            for j in range(1, n_kernels):
                xs = xs + self.resblocks[i * n_kernels + j](x)
            x = xs / n_kernels
        x = self.conv_post(F.leaky_relu(x, FINAL_LRELU_SLOPE)).float()  # (B, n_fft+2, frames)
        bins = cfg.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :bins]).clamp(max=MAGNITUDE_CLIP)
        phase = torch.sin(x[:, bins:])  # upstream wraps the raw phase through sin
        wave = torch.istft(torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase)),
                           cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.stft_window)
        return wave.clamp(-cfg.audio_limit, cfg.audio_limit)

    @torch.inference_mode()
    def inference_with_source(self, mel: torch.Tensor, cache_source: torch.Tensor | None = None,
                              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel (B, 80, T) -> (waveform (B, T*samples_per_frame) float32, excitation (B, 1, same) float32).

        `cache_source` (B, 1, n) overwrites the first n excitation samples: pass the previous chunk's
        excitation tail when vocoding overlapping chunks, so the NSF phase continues without a glitch.
        """
        self._check_mel(mel)
        _, source = self.source(mel, generator)
        if cache_source is not None and cache_source.shape[-1] > 0:
            if cache_source.dim() != 3 or cache_source.shape[-1] > source.shape[-1]:
                raise ValidationError(f"cache_source must be (B, 1, n) with n <= {source.shape[-1]} samples, "
                                      f"got {tuple(cache_source.shape)}")
            source[:, :, :cache_source.shape[-1]] = cache_source.to(source)
        return self.decode(mel, source), source

    @torch.inference_mode()
    def inference(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mel (B, 80, T) -> waveform (B, T*samples_per_frame) float32 at cfg.sampling_rate."""
        return self.inference_with_source(mel, None, generator)[0]

    def _check_mel(self, mel: torch.Tensor) -> None:
        if mel.dim() != 3 or mel.shape[1] != self.cfg.in_channels or mel.shape[2] < 1:
            raise ValidationError(f"HiFT expects a mel of shape (B, {self.cfg.in_channels}, T>=1), "
                                  f"got {tuple(mel.shape)}")


_WN_SUFFIXES = {  # official weight-norm encodings -> (magnitude g, direction v)
    "parametrizations": (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
    "legacy": (".weight_g", ".weight_v"),
}


def fold_weight_norm(state: dict[str, torch.Tensor], targets: list[str]) -> dict[str, torch.Tensor]:
    """Replace each target's (g, v) pair, in either encoding, by the plain weight g * v / ||v|| (dim 0)."""
    out = dict(state)
    for name in targets:
        for g_suffix, v_suffix in _WN_SUFFIXES.values():
            g_key, v_key = name + g_suffix, name + v_suffix
            if g_key in out or v_key in out:
                if g_key not in out or v_key not in out:
                    raise ModelFilesError(f"hift.pt: weight-norm pair incomplete for {name!r}: needs both "
                                          f"{g_key!r} and {v_key!r}; the file is truncated or not a HiFT checkpoint")
                if name + ".weight" in out:
                    raise ModelFilesError(f"hift.pt holds both {name}.weight and its weight-norm pair {g_key!r}; "
                                          "one of them would be dropped: re-download the CosyVoice-300M-25Hz folder")
                g, v = out.pop(g_key).float(), out.pop(v_key).float()
                # a header-only check (meta tensors) needs only the folded shape, which is v's
                out[name + ".weight"] = (torch.empty(v.shape, device="meta") if v.is_meta
                                         else torch._weight_norm(v, g, 0))
    return out


def check_hift_state(model: HiFTGenerator, state: dict[str, torch.Tensor], source: str = "hift.pt"
                     ) -> dict[str, torch.Tensor]:
    """Fold the weight-norm pairs and check keys and shapes both ways against `model` (meta tensors
    work too: `editx doctor` runs this on a hift.pt's index). Returns the folded state."""
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor) or not v.dtype.is_floating_point)
    if bad:
        raise ModelFilesError(f"{source}: {bad[0]} is not a float tensor; re-download the CosyVoice-300M-25Hz folder")
    state = fold_weight_norm(state, model.weight_norm_targets())
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFilesError(f"{source} does not match the hift section of cosyvoice.yaml: "
                              f"missing keys {name_some(missing)}; unexpected keys {name_some(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise ModelFilesError(f"{source}: tensor shapes differ from the hift config: {name_some(wrong)}")
    return state


def load_hift(path: str | Path, config: HiFTConfig, *, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> HiFTGenerator:
    """Load the official hift.pt (a state dict) into a HiFTGenerator with weight norm folded."""
    path = Path(path)
    state = load_torch_file(path, "HiFT checkpoint")
    if not isinstance(state, dict):
        raise ModelFilesError(f"{path} does not hold a state dict (got {type(state).__name__})")
    with torch.device("meta"):
        model = HiFTGenerator(config)
    state = check_hift_state(model, state, str(path))
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    model.init_constants(device)
    model = model.to(device=device, dtype=dtype).eval()
    # the window and harmonic multipliers stay float32: STFT and phase math run in float32
    model.init_constants(device)
    model.requires_grad_(False)
    log.debug("loaded HiFT from %s (%d tensors, %s, %s)", path, len(state), device, dtype)
    return model

