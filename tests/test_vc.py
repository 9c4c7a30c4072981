"""Voice conversion (vc.py): upstream parity of the exact preset, the batched pieces and their joins, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.checkpoint import CheckpointError
from faster_chatterbox.cli import main
from faster_chatterbox.config import ChatterboxConfig, small_config
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.vc import CONTEXT_TOKENS, PIECE_TOKENS, ChatterboxVC

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    sf.write(folder / "source.wav", synthetic_voice(2.0, 22050, seed=5), 22050)  # not 16 kHz: resampled
    sf.write(folder / "long.wav", synthetic_voice(24.0, 16000, seed=7), 16000)
    sf.write(folder / "target.wav", synthetic_voice(4.0, 24000, seed=6), 24000)
    return folder


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("vc") / "ckpt", seed=2, small=True)


@pytest.mark.slow  # full-size S3Gen on both sides
def test_exact_generate_matches_upstream(oracle, clips, tmp_path_factory):
    """Upstream's ChatterboxVC and ours on one checkpoint (full-size S3Gen: upstream builds it so; a small T3,
    which voice conversion does not read): the same waveform within 1e-3 from the same global seed."""
    from chatterbox.vc import ChatterboxVC as Upstream

    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("vc-full") / "ckpt", seed=3,
                                   config=ChatterboxConfig(t3=small_config().t3))
    upstream = Upstream.from_local(ckpt, "cpu")
    upstream.watermarker.apply_watermark = lambda wav, sample_rate: wav
    ours = ChatterboxVC.from_local(ckpt, device="cpu", preset="exact", watermark=False)
    torch.manual_seed(9)
    ref = upstream.generate(str(clips / "source.wav"), target_voice_path=str(clips / "target.wav"))
    torch.manual_seed(9)
    wav = ours.generate(clips / "source.wav", target_voice_path=clips / "target.wav")
    assert wav.shape == ref.shape and wav.dtype == torch.float32
    assert (wav - ref).abs().max() <= 1e-3


def test_long_source_in_pieces_joins_seamlessly(small_ckpt, clips):
    vc = ChatterboxVC.from_local(small_ckpt, device="cpu", preset="fast", watermark=False)
    n_tokens = len(vc.source_tokens(clips / "long.wav"))  # 600: pieces of 250 and 350 tokens
    pieces = list(vc.generate_stream(clips / "long.wav", target_voice_path=clips / "target.wav", seed=4))
    wav = vc.generate(clips / "long.wav", seed=4)[0].numpy()
    assert len(pieces) == 2 and pieces[-1].last and not pieces[0].last
    joined = np.concatenate([p.audio for p in pieces])
    assert len(joined) == n_tokens * vc.s3gen.samples_per_token and np.array_equal(joined, wav)  # seeded: same
    assert pieces[1].start_s == pytest.approx(len(pieces[0].audio) / vc.sr)
    # each piece's window holds its context: the boundary's samples come from two renderings of the same span
    boundary = PIECE_TOKENS * vc.s3gen.samples_per_token
    step = np.abs(np.diff(wav[boundary - 480 : boundary + 480])).max()
    assert step <= 4 * np.abs(np.diff(wav[: boundary - 480])).max()
    assert CONTEXT_TOKENS > 0


def test_errors_and_cli(small_ckpt, clips, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no s3gen.safetensors"):
        ChatterboxVC.from_local(tmp_path, device="cpu")
    vc = ChatterboxVC.from_local(small_ckpt, device="cpu", watermark=False)
    vc.ref_dict = None
    with pytest.raises(ValueError, match="no target voice"):
        vc.generate(clips / "source.wav")
    with pytest.raises(ValueError, match="does not exist"):
        vc.generate(tmp_path / "missing.wav", target_voice_path=clips / "target.wav")
    out = tmp_path / "converted.wav"
    assert main(["convert", str(clips / "source.wav"), "-o", str(out), "--voice", str(clips / "target.wav"),
                 "--checkpoint", str(small_ckpt), "--device", "cpu", "--no-watermark", "--seed", "1"]) == 0
    audio, sr = sf.read(out)
    assert sr == 24000 and len(audio) == len(vc.source_tokens(clips / "source.wav")) * 960
    assert main(["convert", str(tmp_path / "nothing.wav"), "-o", str(out), "--checkpoint", str(small_ckpt)]) == 2
    assert "does not exist" in capsys.readouterr().err
