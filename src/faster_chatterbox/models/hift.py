"""HiFT vocoder of S3Gen: 80-bin mel at 50 Hz -> 24 kHz waveform.

HiFTNet (https://arxiv.org/abs/2309.09493) = a neural-source-filter harmonic source driven by a
predicted F0, fused into a HiFi-GAN style upsampler whose head predicts a 16-point STFT
(magnitude + phase) that an iSTFT turns into samples. 50 Hz frames * (8 * 5 * 3) upsampling *
hop 4 = 480 samples per frame.

Checkpoint keys are those of the official `mel2wav` module: the convolutions carry
torch's weight-norm parametrization (`...parametrizations.weight.original0/1`);
`HiFTGenerator.fold_weight_norm()` bakes it into plain weights after loading.

Beyond upstream (all off by default, so the default path is upstream's):
- `HiFTGenerator.make_fast(dtype)`: the upsampler in bfloat16/float16 as channels-last 2-D convolutions;
  F0, the harmonic source and the (i)STFTs stay float32; float32 waveform out.
- `inference(mel, mel_lens)`: right-padded rows of different lengths in one batch; the padding is zeroed
  before every convolution, so each row equals its unbatched result (see `inference`).
- `inference(..., generators=[...])`: per-row random streams for the source, so a row is reproducible
  whatever batch it is decoded in.
- `inference(..., f0_smoothing=F0Smoothing())`: median + Gaussian smoothing of the predicted F0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm


@dataclass
class HiFTConfig:
    in_channels: int = 80  # mel bins
    base_channels: int = 512
    f0_channels: int = 512  # width of the F0 predictor's conv stack
    nb_harmonics: int = 8  # overtones above F0 in the sine source
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1  # sine amplitude
    nsf_sigma: float = 0.003  # noise std in voiced regions
    nsf_voiced_threshold: float = 10.0  # Hz
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    istft_n_fft: int = 16
    istft_hop: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.upsample_rates) * self.istft_hop


@dataclass(frozen=True)
class F0Smoothing:
    """Smoothing of the predicted F0 (frames at 50 Hz) over voiced frames; unvoiced frames are left as they are."""

    median_frames: int = 5  # odd window of the median filter (1: no median)
    gaussian_sigma: float = 1.0  # std of the Gaussian in frames (0: no Gaussian)

    def __post_init__(self) -> None:
        if not (isinstance(self.median_frames, int) and self.median_frames >= 1 and self.median_frames % 2 == 1):
            raise ValueError(f"median_frames must be an odd integer >= 1, got {self.median_frames!r}")
        if not (isinstance(self.gaussian_sigma, (int, float)) and math.isfinite(self.gaussian_sigma)
                and self.gaussian_sigma >= 0):
            raise ValueError(f"gaussian_sigma must be a finite number >= 0, got {self.gaussian_sigma!r}")


def smooth_f0(f0: torch.Tensor, smoothing: F0Smoothing, voiced_threshold: float = 10.0) -> torch.Tensor:
    """f0: (B, T) Hz -> (B, T): a median, then a Gaussian, each over the voiced frames (> voiced_threshold) only.

    Unvoiced frames are returned unchanged and never averaged in, so voicing and the edges of voiced runs are kept."""
    voiced = f0 > voiced_threshold  # (B, T)
    out = f0
    if smoothing.median_frames > 1:
        r = smoothing.median_frames // 2
        holes = F.pad(f0.masked_fill(~voiced, math.nan), (r, r), value=math.nan)  # (B, T + 2r)
        out = holes.unfold(-1, smoothing.median_frames, 1).nanmedian(dim=-1).values  # (B, T)
    if smoothing.gaussian_sigma > 0:
        r = math.ceil(3 * smoothing.gaussian_sigma)
        taps = torch.arange(-r, r + 1, dtype=f0.dtype, device=f0.device)
        kernel = torch.exp(-0.5 * (taps / smoothing.gaussian_sigma) ** 2)[None, None]  # (1, 1, 2r + 1)
        weight = voiced.to(f0.dtype)[:, None]  # (B, 1, T)
        total = F.conv1d(out.nan_to_num(0.0)[:, None] * weight, kernel, padding=r)
        out = (total / F.conv1d(weight, kernel, padding=r).clamp_min(1e-12))[:, 0]  # normalised convolution
    return torch.where(voiced, out, f0)


def f0_jitter(f0: torch.Tensor, voiced_threshold: float = 10.0) -> float:
    """Mean |f0[t+1] - f0[t]| / ((f0[t+1] + f0[t]) / 2) over pairs of consecutive voiced frames of f0 (B, T):
    the frame-level relative jitter, 0 for a constant pitch."""
    a, b = f0[..., :-1].double(), f0[..., 1:].double()
    pairs = (a > voiced_threshold) & (b > voiced_threshold)
    if not bool(pairs.any()):
        raise ValueError("f0 has no two consecutive voiced frames to measure jitter on")
    return float(((b - a).abs() / ((a + b) / 2))[pairs].mean())


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _wn_conv(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> nn.Conv1d:
    """Weight-normalised 'same' Conv1d."""
    return weight_norm(nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2))


def _as_conv2d(conv: nn.Conv1d | nn.ConvTranspose1d) -> nn.Conv2d | nn.ConvTranspose2d:
    """The same (plain, weight-norm folded) convolution over (B, C, 1, T) instead of (B, C, T)."""
    cls = nn.Conv2d if isinstance(conv, nn.Conv1d) else nn.ConvTranspose2d
    with torch.device("meta"):  # no initialisation: the weights are taken over below
        new = cls(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]), stride=(1, conv.stride[0]),
                  padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]), bias=conv.bias is not None)
    new.weight = nn.Parameter(conv.weight.detach().unsqueeze(2), requires_grad=False)  # (O, I, 1, k)
    if conv.bias is not None:
        new.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)
    return new


def _zero_tail(x: torch.Tensor, lengths: list[int] | None) -> torch.Tensor:
    """x (B, ..., T): zero x[b, ..., lengths[b]:] in place, the padding of batched rows (None: nothing)."""
    if lengths is not None:
        for row, n in enumerate(lengths):
            x[row, ..., n:] = 0
    return x


def _scaled(lengths: list[int] | None, factor: int, extra: int = 0) -> list[int] | None:
    return None if lengths is None else [n * factor + extra for n in lengths]


class Snake(nn.Module):
    """x + sin(alpha x)^2 / alpha, one alpha per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, T) or (B, C, 1, T)
        alpha = self.alpha.view(-1, *(1,) * (x.dim() - 2))
        sin2 = (x * alpha).sin_().square_()  # in place: this runs on the largest tensors of the model
        return torch.addcmul(x, sin2, 1.0 / (alpha + 1e-9))


class ResBlock(nn.Module):
    """Snake -> dilated conv -> Snake -> conv, residual, once per dilation."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(_wn_conv(channels, channels, kernel, d) for d in dilations)
        self.convs2 = nn.ModuleList(_wn_conv(channels, channels, kernel) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:  # x: (B, C, [1,] T)
        """lengths: valid samples per row; x must be zero beyond them, and the output is too."""
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            h = _zero_tail(conv1(act1(x)), lengths)  # Snake(0) = 0: zero in, zero out
            x = _zero_tail(conv2(act2(h)), lengths).add_(x)
        return x


class ConvF0Predictor(nn.Module):
    """Mel -> F0 in Hz: five k=3 convs with ELU, then a per-frame linear head, |.|."""

    def __init__(self, in_channels: int = 80, channels: int = 512):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [_wn_conv(in_channels if i == 0 else channels, channels, 3), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """mel: (B, n_mels, T), zero beyond `lengths` (valid frames per row, None: all) -> F0 (B, T)."""
        h = mel
        for layer in self.condnet:
            h = layer(h)
            if isinstance(layer, nn.ELU):
                _zero_tail(h, lengths)  # the next conv sees the zero padding an unbatched row sees
        return self.classifier(h.transpose(1, 2)).squeeze(-1).abs()


class HarmonicSource(nn.Module):
    """Neural-source-filter excitation: F0 and its overtones as sines (plus noise), merged to one channel.

    Random draws with the global RNG (`generators=None`), in order (the same stream as the official model):
    1. initial phases of all harmonics, U(-pi, pi), (B, H + 1, 1) float32 on the CPU generator
       (even when the model runs on an accelerator);
    2. the additive noise, N(0, 1), (B, H + 1, L) float32 on the F0 device;
    3. a (B, L, 1) N(0, 1) draw on the F0 device whose result the official inference discards;
       it is drawn anyway so that whatever samples after the vocoder sees the same RNG state.
    With one generator per row, row b draws its phases (H + 1, 1) and then its noise (H + 1, lengths[b]) from
    generators[b] (on that generator's device), and nothing from the global RNG.
    """

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        self.sampling_rate = cfg.sampling_rate
        self.sine_amp = cfg.nsf_alpha
        self.noise_std = cfg.nsf_sigma
        self.voiced_threshold = cfg.nsf_voiced_threshold
        self.num_sines = cfg.nb_harmonics + 1
        self.l_linear = nn.Linear(self.num_sines, 1)

    def _draw(self, batch: int, length: int, device: torch.device, generators: list[torch.Generator] | None,
              lengths: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """U(0, 1) phases (B, H+1, 1) on the CPU and N(0, 1) noise (B, H+1, L) on `device`, float32."""
        fp32, n_sines = torch.float32, self.num_sines
        if generators is None:
            uniform = torch.rand(batch, n_sines, 1, dtype=fp32)
            noise = torch.randn(batch, n_sines, length, dtype=fp32, device=device)
            torch.randn(batch, length, 1, dtype=fp32, device=device)  # discarded draw, see the class docstring
            return uniform, noise
        if len(generators) != batch:
            raise ValueError(f"need one generator per row: got {len(generators)} for {batch} rows")
        uniform = torch.empty(batch, n_sines, 1, dtype=fp32)
        noise = torch.zeros(batch, n_sines, length, dtype=fp32, device=device)
        for row, (gen, n) in enumerate(zip(generators, lengths or [length] * batch)):
            uniform[row] = torch.rand(n_sines, 1, dtype=fp32, generator=gen, device=gen.device)
            noise[row, :, :n] = torch.randn(n_sines, n, dtype=fp32, generator=gen, device=gen.device)
        return uniform, noise

    def forward(self, f0: torch.Tensor, generators: list[torch.Generator] | None = None,
                lengths: list[int] | None = None) -> torch.Tensor:
        """f0: (B, 1, L) Hz at the sample rate -> (B, 1, L); lengths: valid samples per row (with generators)."""
        # Phase is integrated over the whole utterance, so this part runs in (at least) float32.
        f0 = _at_least_fp32(f0)
        batch, length = f0.shape[0], f0.shape[-1]
        harmonics = torch.arange(1, self.num_sines + 1, dtype=f0.dtype, device=f0.device)[None, :, None]
        cycles_per_sample = f0 * harmonics / self.sampling_rate  # (B, H+1, L)
        theta = 2 * math.pi * (torch.cumsum(cycles_per_sample, dim=-1) % 1)

        uniform, noise = self._draw(batch, length, f0.device, generators, lengths)
        low, high = torch.tensor(-math.pi, dtype=torch.float32), torch.tensor(math.pi, dtype=torch.float32)
        phase = low + uniform * (high - low)  # (B, H+1, 1)
        phase[:, 0] = 0  # the fundamental starts at phase 0
        sines = self.sine_amp * torch.sin(theta + phase.to(f0.device))

        voiced = (f0 > self.voiced_threshold).to(f0.dtype)  # (B, 1, L)
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        sines = sines * voiced + noise_amp * noise

        merged = torch.tanh(self.l_linear(sines.to(self.l_linear.weight.dtype).transpose(1, 2)))  # (B, L, 1)
        return merged.transpose(1, 2)


class HiFTGenerator(nn.Module):
    """Mel (B, 80, T) -> waveform (B, T * 480), plus the harmonic source that drove it."""

    def __init__(self, cfg: HiFTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or HiFTConfig()
        n_fft = cfg.istft_n_fft
        n_ups = len(cfg.upsample_rates)
        ch = [cfg.base_channels // 2**i for i in range(n_ups + 1)]  # channels before/after each upsampling

        self.m_source = HarmonicSource(cfg)
        self.conv_pre = _wn_conv(cfg.in_channels, ch[0], 7)
        self.ups = nn.ModuleList(
            weight_norm(nn.ConvTranspose1d(ch[i], ch[i + 1], k, u, padding=(k - u) // 2))
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        )
        # The source STFT (hop 4 at 24 kHz) is strided down to the length after each upsampling stage.
        source_strides = [math.prod(cfg.upsample_rates[i + 1:]) for i in range(n_ups)]  # e.g. [15, 3, 1]
        self.source_downs = nn.ModuleList(
            nn.Conv1d(n_fft + 2, ch[i + 1], 2 * s, s, padding=s // 2) if s > 1 else nn.Conv1d(n_fft + 2, ch[i + 1], 1)
            for i, s in enumerate(source_strides)
        )
        self.source_resblocks = nn.ModuleList(
            ResBlock(ch[i + 1], k, d)
            for i, (k, d) in enumerate(zip(cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes))
        )
        self.resblocks = nn.ModuleList(
            ResBlock(ch[i + 1], k, d)
            for i in range(n_ups)
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        )
        self.conv_post = _wn_conv(ch[-1], n_fft + 2, 7)
        self.f0_predictor = ConvF0Predictor(cfg.in_channels, cfg.f0_channels)  # last, as in the checkpoint

    def fold_weight_norm(self) -> None:
        """Replace every weight-norm parametrization by its current weight (call after loading)."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight")

    def make_fast(self, dtype: torch.dtype = torch.bfloat16) -> HiFTGenerator:
        """Turn the loaded model into its fast inference form, in place; returns self.

        Weight norm is folded, and the upsampler's convolutions become channels-last 2-D convolutions over
        (B, C, 1, T) in `dtype` (bfloat16 on CPU, float16/bfloat16 on GPU): oneDNN's fastest kernels here, and
        cuDNN's on GPU. The F0 predictor and the harmonic source stay float32 (the source integrates F0 into a
        phase over the whole utterance), and so do the STFT and iSTFT. `float32` gives the same layout unrounded.
        """
        if not dtype.is_floating_point:
            raise ValueError(f"make_fast needs a floating-point dtype, got {dtype}")
        self.fold_weight_norm()
        f0_modules = set(self.f0_predictor.modules())
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if module not in f0_modules and isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)):
                    setattr(module, name, _as_conv2d(child))
        for child in self.children():
            if child is not self.f0_predictor and child is not self.m_source:
                child.to(dtype=dtype, memory_format=torch.channels_last)
        return self

    @property
    def _channels_last(self) -> bool:
        return self.conv_pre.weight.dim() == 4

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> the upsampler's layout and dtype: itself, or channels-last (B, C, 1, T) after make_fast."""
        x = x.to(self.conv_pre.weight.dtype)
        return x.unsqueeze(2).contiguous(memory_format=torch.channels_last) if self._channels_last else x

    def _window(self, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # Periodic Hann computed in float64 then rounded: equals scipy's get_window("hann", n) used in training.
        return torch.hann_window(self.cfg.istft_n_fft, periodic=True, dtype=torch.float64, device=device).to(dtype)

    def _source_stft(self, source: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """(B, L) -> (B, n_fft + 2, L / hop + 1); lengths: valid samples per row (None: all)."""
        n_fft, hop = self.cfg.istft_n_fft, self.cfg.istft_hop
        source = _at_least_fp32(source)  # the STFTs run in (at least) float32
        if lengths is not None:  # give each row the reflected right edge that an unbatched STFT pads it with
            source, edge = source.clone(), n_fft // 2
            for row, n in enumerate(lengths):
                if n < source.shape[-1]:
                    source[row, n:n + edge] = source[row, n - edge - 1:n - 1].flip(-1)
        spec = torch.stft(source, n_fft, hop, n_fft, window=self._window(source.device, source.dtype), return_complex=True)
        frames = None if lengths is None else [n // hop + 1 for n in lengths]
        return _zero_tail(torch.cat([spec.real, spec.imag], dim=1), frames)

    def _istft(self, head: torch.Tensor) -> torch.Tensor:  # (B, n_fft + 2, F) -> (B, (F - 1) * hop)
        n_fft, hop = self.cfg.istft_n_fft, self.cfg.istft_hop
        head = _at_least_fp32(head)
        n_bins = n_fft // 2 + 1
        magnitude = torch.exp(head[:, :n_bins]).clamp(max=1e2)
        phase = torch.sin(head[:, n_bins:])  # the model was trained with this extra sin
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.istft(spec, n_fft, hop, n_fft, window=self._window(head.device, head.dtype))

    def decode(self, mel: torch.Tensor, source: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """mel: (B, n_mels, T), source: (B, 1, T * 480) -> waveform (B, T * 480), at least float32.

        lengths: valid mel frames per row (None: all); what lies beyond is ignored, and the output is zero there."""
        cfg = self.cfg
        n_kernels = len(cfg.resblock_kernel_sizes)
        s_spec = self._layout(self._source_stft(source.squeeze(1), _scaled(lengths, cfg.samples_per_frame)))

        x = self._layout(mel)
        n = lengths  # valid length of each row at the current rate
        if n is not None:
            x = _zero_tail(x.clone(), n)
        x = _zero_tail(self.conv_pre(x), n)  # (B, 512, [1,] T)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))  # (B, C_i, [1,] T * prod(rates[:i+1]))
            n = _scaled(n, cfg.upsample_rates[i])
            if i == len(self.ups) - 1:
                # one more frame, to match the source STFT
                x = F.pad(x, (1, 0) + (0, 0) * (x.dim() - 3), mode="reflect")
                n = _scaled(n, 1, extra=1)
            source_branch = _zero_tail(self.source_downs[i](s_spec), n)
            x = _zero_tail(x, n) + self.source_resblocks[i](source_branch, n)
            blocks = self.resblocks[i * n_kernels:(i + 1) * n_kernels]
            xs = blocks[0](x, n)
            for block in blocks[1:]:
                xs += block(x, n)
            x = xs.div_(n_kernels)

        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as trained; (B, 18, [1,] 120 T + 1)
        wav = self._istft(x.squeeze(2) if self._channels_last else x)
        return _zero_tail(wav.clamp(-cfg.audio_limit, cfg.audio_limit), _scaled(lengths, cfg.samples_per_frame))

    def _check_lengths(self, mel: torch.Tensor, mel_lens: torch.Tensor | None) -> list[int] | None:
        if mel.dim() != 3 or mel.shape[1] != self.cfg.in_channels:
            raise ValueError(f"mel must be (B, {self.cfg.in_channels}, T), got {tuple(mel.shape)}")
        if mel_lens is None:
            return None
        if mel_lens.shape != (mel.shape[0],) or mel_lens.is_floating_point() or mel_lens.is_complex():
            raise ValueError(f"mel_lens must be integer frame counts of shape ({mel.shape[0]},), got "
                             f"{mel_lens.dtype} {tuple(mel_lens.shape)}")
        lengths = mel_lens.tolist()
        if min(lengths) < 1 or max(lengths) > mel.shape[-1]:
            raise ValueError(f"mel_lens must lie in [1, {mel.shape[-1]}] (the padded length), got {lengths}")
        return None if min(lengths) == mel.shape[-1] else lengths

    @torch.inference_mode()
    def inference(self, mel: torch.Tensor, mel_lens: torch.Tensor | None = None, *,
                  f0_smoothing: F0Smoothing | None = None,
                  generators: list[torch.Generator] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mel: (B, n_mels, T) -> (waveform (B, T * 480) at least float32, source (B, 1, T * 480)).

        mel_lens: (B,) valid frames of right-padded rows (None: all T). Row b's waveform up to mel_lens[b] * 480
        equals that row decoded alone (float rounding, plus the last few samples: the iSTFT's overlap-add there
        sees one more frame than the row's own) and is zero beyond; padded frames never reach valid ones.
        f0_smoothing: smooth the predicted F0 before the source (None: no smoothing, as upstream).
        generators: one torch.Generator per row for the source's random draws, so that a row's output does not
        depend on its batch; None draws from the global RNG exactly as upstream does (see HarmonicSource).
        """
        lengths = self._check_lengths(mel, mel_lens)
        spf = self.cfg.samples_per_frame
        if lengths is not None:
            mel = _zero_tail(mel.clone(), lengths)
        f0 = self.f0_predictor(mel.to(self.f0_predictor.classifier.weight.dtype), lengths)  # (B, T)
        _zero_tail(f0, lengths)  # padded frames unvoiced
        if f0_smoothing is not None:
            f0 = smooth_f0(f0, f0_smoothing, self.cfg.nsf_voiced_threshold)
        f0 = f0.repeat_interleave(spf, dim=-1)[:, None]  # (B, 1, T * 480)
        source = _zero_tail(self.m_source(f0, generators, _scaled(lengths, spf)), _scaled(lengths, spf))
        return self.decode(mel, source, lengths), source
