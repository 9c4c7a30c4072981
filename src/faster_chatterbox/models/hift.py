"""HiFT vocoder of S3Gen: 80-bin mel at 50 Hz -> 24 kHz waveform.

HiFTNet (https://arxiv.org/abs/2309.09493) = a neural-source-filter harmonic source driven by a
predicted F0, fused into a HiFi-GAN style upsampler whose head predicts a 16-point STFT
(magnitude + phase) that an iSTFT turns into samples. 50 Hz frames * (8 * 5 * 3) upsampling *
hop 4 = 480 samples per frame.

Checkpoint keys are those of the official `mel2wav` module: the convolutions carry
torch's weight-norm parametrization (`...parametrizations.weight.original0/1`);
`HiFTGenerator.fold_weight_norm()` bakes it into plain weights after loading.
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


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _wn_conv(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> nn.Conv1d:
    """Weight-normalised 'same' Conv1d."""
    return weight_norm(nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2))


class Snake(nn.Module):
    """x + sin(alpha x)^2 / alpha, one alpha per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, T)
        alpha = self.alpha[None, :, None]
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, T)
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = conv2(act2(conv1(act1(x)))).add_(x)
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

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # mel: (B, n_mels, T) -> (B, T)
        h = self.condnet(mel).transpose(1, 2)  # (B, T, C)
        return self.classifier(h).squeeze(-1).abs()


class HarmonicSource(nn.Module):
    """Neural-source-filter excitation: F0 and its overtones as sines (plus noise), merged to one channel.

    Random draws, in order (the same global-RNG stream as the official model):
    1. initial phases of all harmonics, U(-pi, pi), (B, H + 1, 1) float32 on the CPU generator
       (even when the model runs on an accelerator);
    2. the additive noise, N(0, 1), (B, H + 1, L) float32 on the F0 device;
    3. a (B, L, 1) N(0, 1) draw on the F0 device whose result the official inference discards;
       it is drawn anyway so that whatever samples after the vocoder sees the same RNG state.
    """

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        self.sampling_rate = cfg.sampling_rate
        self.sine_amp = cfg.nsf_alpha
        self.noise_std = cfg.nsf_sigma
        self.voiced_threshold = cfg.nsf_voiced_threshold
        self.num_sines = cfg.nb_harmonics + 1
        self.l_linear = nn.Linear(self.num_sines, 1)

    def forward(self, f0: torch.Tensor) -> torch.Tensor:  # f0: (B, 1, L) Hz at the sample rate -> (B, 1, L)
        # Phase is integrated over the whole utterance, so this part runs in (at least) float32.
        f0 = _at_least_fp32(f0)
        batch, length = f0.shape[0], f0.shape[-1]
        harmonics = torch.arange(1, self.num_sines + 1, dtype=f0.dtype, device=f0.device)[None, :, None]
        cycles_per_sample = f0 * harmonics / self.sampling_rate  # (B, H+1, L)
        theta = 2 * math.pi * (torch.cumsum(cycles_per_sample, dim=-1) % 1)

        fp32 = torch.float32  # the random draws are float32 whatever the compute dtype
        low, high = torch.tensor(-math.pi, dtype=fp32), torch.tensor(math.pi, dtype=fp32)
        phase = low + torch.rand(batch, self.num_sines, 1, dtype=fp32) * (high - low)  # (B, H+1, 1), CPU RNG
        phase[:, 0] = 0  # the fundamental starts at phase 0
        sines = self.sine_amp * torch.sin(theta + phase.to(f0.device))

        voiced = (f0 > self.voiced_threshold).to(f0.dtype)  # (B, 1, L)
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        sines = sines * voiced + noise_amp * torch.randn(sines.shape, dtype=fp32, device=f0.device)
        torch.randn(batch, length, 1, dtype=fp32, device=f0.device)  # discarded draw, see the class docstring

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

    def _window(self, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # Periodic Hann computed in float64 then rounded: equals scipy's get_window("hann", n) used in training.
        return torch.hann_window(self.cfg.istft_n_fft, periodic=True, dtype=torch.float64, device=device).to(dtype)

    def _source_stft(self, source: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, n_fft + 2, L / hop + 1)
        n_fft, hop = self.cfg.istft_n_fft, self.cfg.istft_hop
        source = _at_least_fp32(source)  # the STFTs run in (at least) float32
        spec = torch.stft(source, n_fft, hop, n_fft, window=self._window(source.device, source.dtype), return_complex=True)
        return torch.cat([spec.real, spec.imag], dim=1)

    def _istft(self, head: torch.Tensor) -> torch.Tensor:  # (B, n_fft + 2, F) -> (B, (F - 1) * hop)
        n_fft, hop = self.cfg.istft_n_fft, self.cfg.istft_hop
        head = _at_least_fp32(head)
        n_bins = n_fft // 2 + 1
        magnitude = torch.exp(head[:, :n_bins]).clamp(max=1e2)
        phase = torch.sin(head[:, n_bins:])  # the model was trained with this extra sin
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.istft(spec, n_fft, hop, n_fft, window=self._window(head.device, head.dtype))

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel: (B, n_mels, T), source: (B, 1, T * 480) -> waveform (B, T * 480)."""
        cfg = self.cfg
        s_spec = self._source_stft(source.squeeze(1)).to(mel.dtype)  # (B, 18, 120 T + 1)
        n_kernels = len(cfg.resblock_kernel_sizes)

        x = self.conv_pre(mel)  # (B, 512, T)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))  # (B, C_i, T * prod(rates[:i+1]))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")  # one more frame, to match the source STFT
            x = x + self.source_resblocks[i](self.source_downs[i](s_spec))
            blocks = self.resblocks[i * n_kernels:(i + 1) * n_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs += block(x)
            x = xs.div_(n_kernels)

        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as trained; (B, 18, 120 T + 1)
        wav = self._istft(x).to(mel.dtype)
        return wav.clamp(-cfg.audio_limit, cfg.audio_limit)

    @torch.inference_mode()
    def inference(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel: (B, n_mels, T) -> (waveform (B, T * 480), source (B, 1, T * 480)). Consumes the global RNG."""
        f0 = self.f0_predictor(mel)  # (B, T)
        f0 = f0.repeat_interleave(self.cfg.samples_per_frame, dim=-1)[:, None]  # (B, 1, T * 480)
        source = self.m_source(f0).to(mel.dtype)
        return self.decode(mel, source), source
