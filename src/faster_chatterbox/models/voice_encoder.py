"""Voice encoder (GE2E-style, after Real-Time-Voice-Cloning): T3's 256-d speaker embedding.

A 16 kHz utterance is silence-trimmed, turned into a 40-band power mel spectrogram, cut into
overlapping 160-frame partials, each partial goes through a 3-layer LSTM whose last hidden state
is projected, ReLU'd and L2-normalised; the utterance embedding is the L2-normalised mean of its
partial embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faster_chatterbox.audio.mel import mel_filterbank


@dataclass
class VoiceEncoderConfig:
    sample_rate: int = 16000
    num_mels: int = 40
    n_fft: int = 400
    hop_size: int = 160
    win_size: int = 400
    fmin: float = 0.0
    fmax: float = 8000.0
    mel_power: float = 2.0  # the mel is taken of |STFT| ** mel_power, no log
    hidden_size: int = 256
    num_layers: int = 3
    embed_size: int = 256
    final_relu: bool = True
    partial_frames: int = 160  # frames per partial utterance (1.6 s)
    trim_frame_length: int = 2048  # silence-trim RMS frames
    trim_hop_length: int = 512


class VoiceEncoder(nn.Module):
    def __init__(self, cfg: VoiceEncoderConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or VoiceEncoderConfig()
        self.lstm = nn.LSTM(cfg.num_mels, cfg.hidden_size, num_layers=cfg.num_layers, batch_first=True)
        self.proj = nn.Linear(cfg.hidden_size, cfg.embed_size)
        # Scale/offset of the GE2E training loss; in the checkpoint but unused at inference.
        self.similarity_weight = nn.Parameter(torch.tensor([10.0]))
        self.similarity_bias = nn.Parameter(torch.tensor([-5.0]))

    def forward(self, mels: Tensor) -> Tensor:
        """Partial-utterance embeddings: mels (B, partial_frames, num_mels) -> (B, embed_size), unit norm."""
        _, (hidden, _) = self.lstm(mels)  # hidden: (num_layers, B, hidden_size)
        embeds = self.proj(hidden[-1])
        if self.cfg.final_relu:
            embeds = F.relu(embeds)
        return embeds / torch.linalg.norm(embeds, dim=1, keepdim=True)

    # -----------------------------------------------------------------------------------------
    # Front-end (librosa-compatible, computed on the CPU or the model's device)
    # -----------------------------------------------------------------------------------------

    def trim_silence(self, wav: Tensor, top_db: float) -> Tensor:
        """Drop leading/trailing audio whose frame RMS is more than `top_db` dB below the loudest frame.

        Matches librosa.effects.trim(wav, top_db=top_db) (2048-sample frames, 512 hop, zero-padded
        centred framing); the cut points are multiples of the hop.
        """
        frame, hop = self.cfg.trim_frame_length, self.cfg.trim_hop_length
        frames = F.pad(wav, (frame // 2, frame // 2)).unfold(0, frame, hop)  # (1 + N // hop, frame)
        rms = frames.square().mean(dim=-1).sqrt()  # (n_frames,)
        power_db = 10.0 * rms.square().clamp_min(1e-10).log10()
        ref_db = 10.0 * rms.max().square().clamp_min(1e-10).log10()
        loud = torch.nonzero(power_db - ref_db > -top_db).flatten()
        if loud.numel() == 0:
            return wav[:0]
        start = int(loud[0]) * hop
        end = min(wav.shape[-1], (int(loud[-1]) + 1) * hop)
        return wav[start:end]

    def melspectrogram(self, wav: Tensor) -> Tensor:
        """Power mel spectrogram like librosa's: wav (N,) -> (1 + N // hop_size, num_mels) float32.

        STFT with centred reflect padding and a periodic Hann window, computed in float64 and rounded
        to complex64, as librosa does for float32 audio.
        """
        cfg = self.cfg
        window = torch.hann_window(cfg.win_size, periodic=True, dtype=torch.float64, device=wav.device)
        spec = torch.stft(wav.double(), cfg.n_fft, cfg.hop_size, cfg.win_size, window=window,
                          center=True, pad_mode="reflect", return_complex=True)  # (n_fft // 2 + 1, T)
        magnitudes = spec.to(torch.complex64).abs().pow(cfg.mel_power)
        basis = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.num_mels, fmin=cfg.fmin, fmax=cfg.fmax)
        return (basis.to(wav.device) @ magnitudes).T  # (T, num_mels)

    # -----------------------------------------------------------------------------------------
    # Full utterances
    # -----------------------------------------------------------------------------------------

    def partial_step(self, rate: float | None, overlap: float) -> int:
        """Frames between consecutive partials: from `rate` (partials per second) if given, else `overlap`."""
        cfg = self.cfg
        if rate is None:
            assert 0 <= overlap < 1
            step = round(cfg.partial_frames * (1 - overlap))
        else:
            # Upstream's formula (its "rate" is not literally partials per second); kept for parity.
            step = round(cfg.sample_rate / rate / cfg.partial_frames)
        assert 0 < step <= cfg.partial_frames
        return step

    def num_partials(self, n_frames: int, step: int, min_coverage: float) -> int:
        """Partials covering `n_frames`; the last one is kept if >= min_coverage of it is real audio."""
        win = self.cfg.partial_frames
        n, remainder = divmod(max(n_frames - win + step, 0), step)
        if n == 0 or (remainder + win - step) / win >= min_coverage:
            n += 1
        return n

    def utterance_embeds(self, mels: list[Tensor], rate: float | None = 1.3, overlap: float = 0.5,
                         min_coverage: float = 0.8, batch_size: int | None = 32) -> Tensor:
        """Utterance embeddings from mels [(T_i, num_mels)] -> (B, embed_size), unit norm."""
        assert 0 < min_coverage <= 1
        win, step = self.cfg.partial_frames, self.partial_step(rate, overlap)
        param = self.proj.weight
        counts, partials = [], []
        for mel in mels:
            n = self.num_partials(mel.shape[0], step, min_coverage)
            target_len = win + step * (n - 1)
            mel = F.pad(mel, (0, 0, 0, max(target_len - mel.shape[0], 0)))  # zero-pad the tail
            partials.append(mel[:target_len].unfold(0, win, step).transpose(1, 2))  # (n, win, num_mels)
            counts.append(n)
        partials = torch.cat(partials).to(device=param.device, dtype=param.dtype)  # (P, win, num_mels)

        n_chunks = math.ceil(len(partials) / (batch_size or len(partials)))
        partial_embeds = torch.cat([self(chunk) for chunk in partials.chunk(n_chunks)])  # (P, embed_size)
        embeds = torch.stack([e.mean(dim=0) for e in partial_embeds.split(counts)])  # (B, embed_size)
        return embeds / torch.linalg.norm(embeds, dim=1, keepdim=True)

    @torch.inference_mode()
    def embeds_from_wavs(self, wavs: list[np.ndarray], sample_rate: int, as_spk: bool = False,
                         batch_size: int = 32, trim_top_db: float | None = 20, rate: float | None = 1.3,
                         overlap: float = 0.5, min_coverage: float = 0.8) -> np.ndarray:
        """Embeddings of raw 1D waveforms: (B, embed_size) float32, or (embed_size,) if `as_spk`.

        Audio not at `cfg.sample_rate` is resampled with soxr (upstream uses resampy's kaiser_fast
        there, so that path is close to, not bit-identical with, upstream).
        """
        if sample_rate != self.cfg.sample_rate:
            import soxr

            wavs = [soxr.resample(w, sample_rate, self.cfg.sample_rate, quality="HQ") for w in wavs]
        device = self.proj.weight.device
        mels = []
        for wav in wavs:
            wav = torch.as_tensor(np.asarray(wav), device=device)
            if trim_top_db:
                wav = self.trim_silence(wav, trim_top_db)
            mels.append(self.melspectrogram(wav))
        embeds = self.utterance_embeds(mels, rate, overlap, min_coverage, batch_size).float().cpu().numpy()
        if as_spk:
            spk = embeds.mean(axis=0)
            return spk / np.linalg.norm(spk)
        return embeds
