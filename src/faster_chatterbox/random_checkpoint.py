"""`faster-chatterbox init-random DIR`: a random-weight checkpoint in the official file layout.

No model weights can be downloaded in CI or on an offline machine, so everything in this
repository (tests, benchmarks, the main job) can run on one of these. The architecture and the
file layout are the real ones; the audio is noise.

  --small  writes tiny model sizes plus a `config.json` that `from_local` reads, for fast tests.
  --model flash  Chatterbox-Flash's layout: t3_flash.safetensors (T3 with the [MASK] row) and a meanflow
           s3gen.safetensors, for ChatterboxFlashTTS.
           The official checkpoint has no config.json: the official sizes are the defaults.
A `RANDOM-WEIGHTS.txt` file marks the directory so every load can warn about it.
"""

from __future__ import annotations

import string
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from .audio.synthetic import synthetic_voice
from .checkpoint import RANDOM_MARKER
from .config import ChatterboxConfig, small_config
from .models.s3gen import MEANFLOW_FILE, S3Gen, meanflow_config

_SPECIALS = ["[STOP]", "[UNK]", "[SPACE]", "[PAD]", "[SEP]", "[CLS]", "[MASK]"]  # ids 0..6, as the official file
_START_ID = 255
MODELS = ("base", "flash")
_VOCAB_SIZE = 704


def write_tokenizer(path: Path) -> None:
    """A character-level English tokenizer.json in the official id scheme:
    [STOP]=0, [UNK]=1, [SPACE]=2, [START]=255, 704 ids (unused ids are placeholders)."""
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in string.ascii_letters + string.digits + string.punctuation + "àâäçéèêëîïôöùûüñ":
        vocab[ch] = len(vocab)
    for i in range(len(vocab), _VOCAB_SIZE):
        vocab["[START]" if i == _START_ID else f"[UNUSED_{i}]"] = i
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(_SPECIALS + ["[START]"])
    tokenizer.save(str(path))


def _randomize_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Small random values everywhere, so that no tensor keeps a trivial init (ones, zeros)."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.75)
            elif tensor.dim() >= 2:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05 + (1.0 if "norm" in name else 0.0))


def _s3gen_state(s3gen: S3Gen) -> dict[str, torch.Tensor]:
    """S3Gen's tensors as the official files hold them: with the S3 tokenizer's mel filters and window, which
    upstream's strict load of s3gen_meanflow.safetensors requires (we recompute them)."""
    state = dict(s3gen.state_dict())
    state["tokenizer._mel_filters"] = s3gen.tokenizer._mel_filters
    state["tokenizer.window"] = s3gen.tokenizer.window
    return state


def _meanflow_s3gen(config: ChatterboxConfig, s3gen: S3Gen, generator: torch.Generator) -> S3Gen:
    """Turbo's decoder: a whole S3Gen with a meanflow estimator. Its S3 tokenizer and CAMPPlus are the frozen
    pretrained front-ends, taken from `s3gen`; the flow and HiFT are freshly random."""
    meanflow = S3Gen(meanflow_config(config.s3gen))
    _randomize_(meanflow.flow, generator)
    _randomize_(meanflow.mel2wav, generator)
    meanflow.tokenizer.load_state_dict(s3gen.tokenizer.state_dict())
    meanflow.speaker_encoder.load_state_dict(s3gen.speaker_encoder.state_dict())
    return meanflow


def write_random_checkpoint(directory: str | Path, seed: int = 0, small: bool = False,
                            meanflow: bool = False, model: str = "base") -> Path:
    """Write the official files with random weights; `meanflow` adds Turbo's s3gen_meanflow.safetensors;
    model "flash": Chatterbox-Flash's files instead."""
    from .tts import ChatterboxTTS
    from .tts_flash import ChatterboxFlashTTS

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = replace(small_config() if small else ChatterboxConfig(), flash=model == "flash")
    generator = torch.Generator().manual_seed(seed)
    modules = config.build_modules()
    for name, module in modules.items():
        _randomize_(module, generator)
    if meanflow:  # drawn after the others, so that the other files do not depend on `meanflow`
        modules[MEANFLOW_FILE] = _meanflow_s3gen(config, modules["s3gen.safetensors"], generator)
    for name, module in modules.items():
        state = _s3gen_state(module) if isinstance(module, S3Gen) else module.state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / name))
    write_tokenizer(directory / "tokenizer.json")
    if small:
        config.save(directory / "config.json")
    (directory / RANDOM_MARKER).write_text("These weights are random: faster-chatterbox init-random wrote them for "
                                           "tests and benchmarks. The audio they make is noise.\n")
    # The built-in voice: the conditionals of a synthetic clip, computed by this very checkpoint.
    tts = (ChatterboxFlashTTS if config.flash else ChatterboxTTS).from_local(directory, device="cpu", watermark=False)
    tts.conditionals_from_wav(synthetic_voice(10.0, 24000, seed=seed), 24000).save(directory / "conds.pt")
    return directory
