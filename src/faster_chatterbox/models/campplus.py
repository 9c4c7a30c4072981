"""CAM++ speaker-verification network (3D-Speaker), S3Gen's 192-d x-vector speaker encoder.

Kaldi fbank (80 bins, per-utterance mean removed) -> 2D conv front-end (FCM) -> TDNN ->
three densely connected blocks of context-aware-masked TDNN layers with transitions ->
mean/std statistics pooling -> 1x1 projection + affine-free BatchNorm.
Inference only: every BatchNorm uses its running statistics, so keep the module in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faster_chatterbox.audio.kaldi_fbank import kaldi_fbank


@dataclass
class CAMPPlusConfig:
    feat_dim: int = 80  # fbank bins
    embedding_size: int = 192
    m_channels: int = 32  # FCM conv channels
    init_channels: int = 128  # TDNN output channels
    growth_rate: int = 32  # channels each dense layer adds
    bn_size: int = 4  # bottleneck width = bn_size * growth_rate
    block_layers: tuple[int, ...] = (12, 24, 16)
    block_kernel_sizes: tuple[int, ...] = (3, 3, 3)
    block_dilations: tuple[int, ...] = (1, 2, 2)
    seg_len: int = 100  # frames per segment in the CAM context pooling


class BNReLU(nn.Module):
    """BatchNorm1d, then ReLU (checkpoint name: `<nonlinear>.batchnorm`); optionally affine-free, no ReLU."""

    def __init__(self, channels: int, affine: bool = True, relu: bool = True):
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, affine=affine)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.batchnorm(x)
        return F.relu(x) if self.relu else x


# ---------------------------------------------------------------------------------------------
# FCM: 2D conv front-end over (frequency, time)
# ---------------------------------------------------------------------------------------------


class ResBlock2d(nn.Module):
    """Basic ResNet block; `stride` downsamples frequency only."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class FCM(nn.Module):
    def __init__(self, cfg: CAMPPlusConfig):
        super().__init__()
        c = cfg.m_channels
        self.conv1 = nn.Conv2d(1, c, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.layer1 = nn.Sequential(ResBlock2d(c, c, stride=2), ResBlock2d(c, c, stride=1))
        self.layer2 = nn.Sequential(ResBlock2d(c, c, stride=2), ResBlock2d(c, c, stride=1))
        self.conv2 = nn.Conv2d(c, c, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.out_channels = c * (cfg.feat_dim // 8)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, F, T) -> (B, m_channels * F // 8, T)
        x = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))  # (B, C, F, T)
        x = self.layer2(self.layer1(x))  # (B, C, F / 4, T)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, C, F / 8, T)
        return x.flatten(1, 2)


# ---------------------------------------------------------------------------------------------
# Densely connected TDNN trunk
# ---------------------------------------------------------------------------------------------


class TDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                                padding=kernel_size // 2, bias=False)
        self.nonlinear = BNReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """Dilated conv whose output is gated by a sigmoid mask predicted from utterance + segment means."""

    def __init__(self, channels: int, out_channels: int, kernel_size: int, dilation: int, seg_len: int,
                 reduction: int = 2):
        super().__init__()
        self.seg_len = seg_len
        self.linear_local = nn.Conv1d(channels, out_channels, kernel_size,
                                      padding=(kernel_size - 1) // 2 * dilation, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(channels, channels // reduction, 1)
        self.linear2 = nn.Conv1d(channels // reduction, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, C, T)
        n_frames = x.shape[-1]
        segment_means = F.avg_pool1d(x, self.seg_len, self.seg_len, ceil_mode=True)  # (B, C, ceil(T / seg_len))
        segment_means = segment_means.repeat_interleave(self.seg_len, dim=-1)[..., :n_frames]  # (B, C, T)
        context = x.mean(-1, keepdim=True) + segment_means
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * mask


class CAMDenseTDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int, dilation: int,
                 seg_len: int):
        super().__init__()
        self.nonlinear1 = BNReLU(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = BNReLU(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, out_channels, kernel_size, dilation, seg_len)

    def forward(self, x: Tensor) -> Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.ModuleDict):
    """Layers `tdnnd1..N`; each appends `growth_rate` channels to its input (dense connectivity)."""

    def __init__(self, num_layers: int, in_channels: int, cfg: CAMPPlusConfig, kernel_size: int, dilation: int):
        super().__init__({
            f"tdnnd{i + 1}": CAMDenseTDNNLayer(in_channels + i * cfg.growth_rate, cfg.growth_rate,
                                               cfg.bn_size * cfg.growth_rate, kernel_size, dilation, cfg.seg_len)
            for i in range(num_layers)
        })

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.values():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.nonlinear = BNReLU(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.nonlinear(x))


class DenseLayer(nn.Module):
    """Final projection: 1x1 conv on the pooled vector, then BatchNorm without affine parameters."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = BNReLU(out_channels, affine=False, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, C_in) -> (B, C_out)
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class XVector(nn.Module):
    def __init__(self, cfg: CAMPPlusConfig, in_channels: int):
        super().__init__()
        self.tdnn = TDNNLayer(in_channels, cfg.init_channels, kernel_size=5, stride=2)
        channels = cfg.init_channels
        stages = zip(cfg.block_layers, cfg.block_kernel_sizes, cfg.block_dilations)
        for i, (num_layers, kernel_size, dilation) in enumerate(stages, start=1):
            self.add_module(f"block{i}", CAMDenseTDNNBlock(num_layers, channels, cfg, kernel_size, dilation))
            channels += num_layers * cfg.growth_rate
            self.add_module(f"transit{i}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.num_stages = len(cfg.block_layers)
        self.out_nonlinear = BNReLU(channels)
        self.dense = DenseLayer(2 * channels, cfg.embedding_size)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, C_fcm, T) -> (B, embedding_size)
        x = self.tdnn(x)  # (B, init_channels, T / 2)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"transit{i}")(getattr(self, f"block{i}")(x))
        x = self.out_nonlinear(x)  # (B, C, T / 2)
        stats = torch.cat([x.mean(dim=-1), x.std(dim=-1)], dim=-1)  # (B, 2C), unbiased std
        return self.dense(stats)


class CAMPPlus(nn.Module):
    def __init__(self, cfg: CAMPPlusConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CAMPPlusConfig()
        self.head = FCM(cfg)
        self.xvector = XVector(cfg, self.head.out_channels)

    def forward(self, feats: Tensor) -> Tensor:
        # feats: (B, T, feat_dim) mean-normalised fbank -> (B, embedding_size)
        return self.xvector(self.head(feats.transpose(1, 2)))

    def features(self, wav: Tensor) -> Tensor:
        """16 kHz audio (B, N) -> fbank with per-utterance mean removed (B, T, feat_dim), >= float32."""
        wav = wav.to(torch.promote_types(wav.dtype, torch.float32))
        feats = kaldi_fbank(wav, num_mel_bins=self.cfg.feat_dim)  # (B, T, feat_dim)
        return feats - feats.mean(dim=1, keepdim=True)

    def inference(self, wav: Tensor) -> Tensor:
        """x-vectors of 16 kHz audio (B, N) (rows of equal length) -> (B, embedding_size)."""
        weight = self.head.conv1.weight
        return self(self.features(wav.to(weight.device)).to(weight.dtype))
