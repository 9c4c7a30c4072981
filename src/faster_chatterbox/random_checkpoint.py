"""`faster-chatterbox init-random DIR`: a random-weight checkpoint in the official file layout.

No model weights can be downloaded in CI or on an offline machine, so everything in this
repository (tests, benchmarks, the main job) can run on one of these. The architecture and the
file layout are the real ones; the audio is noise.

  --small  writes tiny model sizes plus a `config.json` that `from_local` reads, for fast tests.
           The official checkpoint has no config.json: the official sizes are the defaults.
A `RANDOM-WEIGHTS.txt` file marks the directory so every load can warn about it.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from .audio.synthetic import synthetic_voice
from .checkpoint import RANDOM_MARKER
from .config import ChatterboxConfig, small_config, turbo_config
from .models.s3gen import MEANFLOW_FILE, S3Gen, meanflow_config
from .text.gpt2_tokenizer import END_OF_TEXT, FIRST_TAG_ID, PARALINGUISTIC_TAGS

_SPECIALS = ["[STOP]", "[UNK]", "[SPACE]", "[PAD]", "[SEP]", "[CLS]", "[MASK]"]  # ids 0..6, as the official file
_START_ID = 255
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


# What the random GPT-2 tokenizer's merges are learned from: any English will do, the ids are random anyway.
_BPE_TEXT = ("The quick brown fox jumps over the lazy dog. Hello there, how are you today? I think that this is "
             "what we wanted: a voice that reads every sentence of the book, one chapter after another. "
             "She said it would rain, and then the sun came out again over the hills and the river.")


def write_gpt2_tokenizer(directory: Path) -> None:
    """Turbo's tokenizer files in the official id scheme: a byte-level BPE (merges learned from a little
    English), ids up to 50255 filled with placeholders, <|endoftext|> = 50256, the 19 tags at 50257-50275."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([_BPE_TEXT] * 4, trainer)
    learned = json.loads(tokenizer.to_str())["model"]
    vocab = dict(sorted(learned["vocab"].items(), key=lambda item: item[1]))
    for i in range(len(vocab), FIRST_TAG_ID - 1):
        vocab[f"<|unused{i}|>"] = i
    vocab[END_OF_TEXT] = FIRST_TAG_ID - 1
    merges = [" ".join(m) if isinstance(m, list) else m for m in learned["merges"]]
    specials = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "added_tokens.json": json.dumps({tag: FIRST_TAG_ID + i for i, tag in enumerate(PARALINGUISTIC_TAGS)}),
        "tokenizer_config.json": json.dumps({"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024,
                                             "add_prefix_space": False, **specials}),
        "special_tokens_map.json": json.dumps(specials),
    }
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")


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


MODELS = ("chatterbox", "turbo", "nano")


def write_random_checkpoint(directory: str | Path, seed: int = 0, small: bool = False,
                            meanflow: bool = False, model: str = "chatterbox") -> Path:
    """Write the official files with random weights; `meanflow` adds Turbo's s3gen_meanflow.safetensors.
    model "turbo" / "nano": Chatterbox-Turbo's or -Nano's layout instead (checkpoint.TURBO_FILES: the GPT-2
    T3 with the token table upstream's strict load wants, the meanflow S3Gen, the GPT-2 tokenizer files)."""
    from .tts import ChatterboxTTS
    from .tts_turbo import UNUSED_T3_KEYS, ChatterboxTurboTTS

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    turbo = model != "chatterbox"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if turbo:
        config = turbo_config(nano=model == "nano", small=small)
    else:
        config = small_config() if small else ChatterboxConfig()
    generator = torch.Generator().manual_seed(seed)
    modules = config.build_modules()
    for name, module in modules.items():
        _randomize_(module, generator)
    if meanflow and not turbo:  # drawn after the others, so that the other files do not depend on `meanflow`
        modules[MEANFLOW_FILE] = _meanflow_s3gen(config, modules["s3gen.safetensors"], generator)
    for name, module in modules.items():
        state = _s3gen_state(module) if isinstance(module, S3Gen) else dict(module.state_dict())
        if turbo and name == config.t3_file:
            table = (config.t3.text_tokens_dict_size, config.t3.dim)
            state.update({key: torch.randn(table, generator=generator) * 0.02 for key in UNUSED_T3_KEYS})
        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / name))
    if turbo:
        write_gpt2_tokenizer(directory)
    else:
        write_tokenizer(directory / "tokenizer.json")
    if small:
        config.save(directory / "config.json")
    (directory / RANDOM_MARKER).write_text("These weights are random: faster-chatterbox init-random wrote them for "
                                           "tests and benchmarks. The audio they make is noise.\n")
    # The built-in voice: the conditionals of a synthetic clip, computed by this very checkpoint.
    if turbo:
        tts = ChatterboxTurboTTS.from_local(directory, device="cpu", nano=model == "nano", watermark=False)
    else:
        tts = ChatterboxTTS.from_local(directory, device="cpu", watermark=False)
    tts.conditionals_from_wav(synthetic_voice(10.0, 24000, seed=seed), 24000).save(directory / "conds.pt")
    return directory
