"""`faster-chatterbox init-random DIR`: a random-weight checkpoint in the official file layout.

No model weights can be downloaded in CI or on an offline machine, so everything in this
repository (tests, benchmarks, the main job) can run on one of these. The architecture and the
file layout are the real ones; the audio is noise.

  --small  writes tiny model sizes plus a `config.json` that `from_local` reads, for fast tests.
           The official checkpoint has no config.json: the official sizes are the defaults.
  --model turbo | nano   Chatterbox-Turbo's / -Nano's layout: the GPT-2 T3, s3gen_meanflow.safetensors and
           the GPT-2 tokenizer files (the 19 paralinguistic tags at their official ids).
  --model flash  Chatterbox-Flash's layout: t3_flash.safetensors (T3 with the [MASK] row) and a meanflow
           s3gen.safetensors, for ChatterboxFlashTTS.
  --model multilingual   Chatterbox Multilingual's layout: ve.pt and s3gen.pt (pickled state dicts), T3 v2 and
           v3 (text vocabulary 2454), a grapheme tokenizer of every script with the 23 language tags and the
           Cangjie code tokens, and a random Cangjie5_TC.json table.
A `RANDOM-WEIGHTS.txt` file marks the directory so every load can warn about it.
"""

from __future__ import annotations

import json
import string
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from .audio.synthetic import synthetic_voice
from .checkpoint import MTL_T3_FILES, RANDOM_MARKER
from .config import ChatterboxConfig, flash_config, small_config, turbo_config
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


_MTL_VOCAB_SIZE = 2454
_CANGJIE_LETTERS = "abcdefghijklmnopqrstuvwxy"
# lower-case letters of the 23 languages after NFKD (accents are combining marks), kana, conjoining jamo
_MTL_RANGES = ((0x0300, 0x036F), (0x03B1, 0x03C9), (0x0430, 0x045F), (0x05B0, 0x05EA), (0x0620, 0x0652),
               (0x0900, 0x097F), (0x1100, 0x11FF), (0x3041, 0x3096), (0x3099, 0x30FF))
_MTL_EXTRA = "\u0131\u0142\u00f8\u00e6\u00df\u0111\u0153\u3002\u3001\u300c\u300d\u00bf\u00a1\u060c\u061f\u0964"


def write_multilingual_tokenizer(path: Path) -> None:
    """A character-level grapheme tokenizer in the official multilingual id scheme: [STOP]=0, [UNK]=1,
    [SPACE]=2, [START]=255, the language tags [ar] ... [zh] and the Cangjie tokens [cj_a] ... [cj_.] as added
    tokens, 2454 ids."""
    from .text.multilingual import SUPPORTED_LANGUAGES

    tags = [f"[{lang}]" for lang in SUPPORTED_LANGUAGES]
    cangjie = [f"[cj_{c}]" for c in _CANGJIE_LETTERS + string.digits + "."]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation + _MTL_EXTRA)
    chars += [chr(c) for first, last in _MTL_RANGES for c in range(first, last + 1)]
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for tok in chars + tags + cangjie:
        if len(vocab) == _START_ID:
            vocab["[START]"] = _START_ID
        vocab.setdefault(tok, len(vocab))
    for i in range(len(vocab), _MTL_VOCAB_SIZE):
        vocab[f"[UNUSED_{i}]"] = i
    assert len(vocab) == _MTL_VOCAB_SIZE and vocab["[START]"] == _START_ID
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(_SPECIALS + ["[START]"] + tags + cangjie)
    tokenizer.save(str(path))


def write_cangjie_table(path: Path, seed: int) -> None:
    """A random Cangjie5_TC.json: every CJK unified ideograph with a code of 1-5 letters (short codes are
    shared by many characters, as real ones are), in the official entry format "char<TAB>code"."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 6, (0x9FFF - 0x4E00 + 1,), generator=generator).tolist()
    letters = torch.randint(0, len(_CANGJIE_LETTERS), (len(lengths), 5), generator=generator).tolist()
    entries = [chr(0x4E00 + i) + "\t" + "".join(_CANGJIE_LETTERS[k] for k in row[:n])
               for i, (n, row) in enumerate(zip(lengths, letters))]
    path.write_text(json.dumps(entries, ensure_ascii=False) + "\n", encoding="utf-8")


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


MODELS = ("chatterbox", "turbo", "nano", "multilingual", "flash")


def write_random_checkpoint(directory: str | Path, seed: int = 0, small: bool = False,
                            meanflow: bool = False, model: str = "chatterbox",
                            config: ChatterboxConfig | None = None) -> Path:
    """Write the official files with random weights; `meanflow` adds Turbo's s3gen_meanflow.safetensors.
    model "turbo" / "nano": Chatterbox-Turbo's or -Nano's layout instead (checkpoint.TURBO_FILES: the GPT-2
    T3 with the token table upstream's strict load wants, the meanflow S3Gen, the GPT-2 tokenizer files);
    "multilingual": Chatterbox Multilingual's; "flash": Chatterbox-Flash's. config: other sizes than the official or small ones (written
    to config.json; the multilingual text vocabulary is set in any case)."""
    from .tts import ChatterboxTTS
    from .tts_flash import ChatterboxFlashTTS
    from .tts_turbo import UNUSED_T3_KEYS, ChatterboxTurboTTS

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    if model == "multilingual":
        return _write_multilingual(Path(directory), seed, small, config)
    turbo, flash = model in ("turbo", "nano"), model == "flash"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    official = turbo_config(nano=model == "nano") if turbo else flash_config() if flash else ChatterboxConfig()
    if config is None:
        config = (turbo_config(nano=model == "nano", small=small) if turbo else flash_config(small) if flash
                  else small_config() if small else official)
    generator = torch.Generator().manual_seed(seed)
    modules = config.build_modules()
    for name, module in modules.items():
        _randomize_(module, generator)
    if meanflow and model == "chatterbox":  # drawn after the others, so that the other files do not depend on `meanflow`
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
    if config != official:
        config.save(directory / "config.json")
    if turbo:
        tts = ChatterboxTurboTTS.from_local(directory, device="cpu", nano=model == "nano", watermark=False)
    else:
        tts = (ChatterboxFlashTTS if flash else ChatterboxTTS).from_local(directory, device="cpu", watermark=False)
    _finish(directory, tts, seed)
    return directory


def _finish(directory: Path, tts, seed: int) -> None:
    """The random-weights marker, then the built-in voice: the conditionals of a synthetic clip, computed by
    this very checkpoint (`tts`, loaded from it)."""
    (directory / RANDOM_MARKER).write_text("These weights are random: faster-chatterbox init-random wrote them for "
                                           "tests and benchmarks. The audio they make is noise.\n")
    tts.conditionals_from_wav(synthetic_voice(10.0, 24000, seed=seed), 24000).save(directory / "conds.pt")


def _write_multilingual(directory: Path, seed: int, small: bool, config: ChatterboxConfig | None) -> Path:
    from .text.multilingual import CANGJIE_FILE, TOKENIZER_FILE
    from .tts_multilingual import ChatterboxMultilingualTTS

    directory.mkdir(parents=True, exist_ok=True)
    config = config or (small_config() if small else ChatterboxConfig())
    config = replace(config, t3=replace(config.t3, text_tokens_dict_size=_MTL_VOCAB_SIZE))
    official = config == replace(ChatterboxConfig(), t3=replace(ChatterboxConfig().t3, text_tokens_dict_size=_MTL_VOCAB_SIZE))
    generator = torch.Generator().manual_seed(seed)
    modules = config.build_modules()
    for module in modules.values():
        _randomize_(module, generator)
    torch.save(dict(modules["ve.safetensors"].state_dict()), directory / "ve.pt")
    torch.save(_s3gen_state(modules["s3gen.safetensors"]), directory / "s3gen.pt")
    t3 = modules["t3_cfg.safetensors"]
    for version, name in MTL_T3_FILES.items():  # v3: the same shapes, other random values
        if version != "v2":
            _randomize_(t3, generator)
        save_file({k: v.contiguous() for k, v in t3.state_dict().items()}, str(directory / name))
    write_multilingual_tokenizer(directory / TOKENIZER_FILE)
    write_cangjie_table(directory / CANGJIE_FILE, seed)
    if not official:
        config.save(directory / "config.json")
    _finish(directory, ChatterboxMultilingualTTS.from_local(directory, device="cpu", watermark=False), seed)
    return directory


def avoid_invalid_speech_ids(ckpt: Path) -> None:
    """Point a random multilingual checkpoint's output rows of the speech ids S3Gen has no embedding for (6561
    and 6563 up; 6562 is the stop) against the backbone's mean hidden state, so that T3 does not sample them:
    upstream 0.1.7's multilingual generate() passes them on to S3Gen and crashes (ours drops them, as both do
    for English). Parity tests and benchmarks against upstream's multilingual model need it; speed is unchanged."""
    from safetensors.torch import load_file

    from .tts_multilingual import ChatterboxMultilingualTTS

    for version, name in MTL_T3_FILES.items():  # v2 and v3, each against its own backbone
        path = Path(ckpt) / name
        if not path.is_file():
            continue
        tts = ChatterboxMultilingualTTS.from_local(ckpt, device="cpu", t3_model=version, preset="exact",
                                                   watermark=False)
        with torch.inference_mode():
            x = tts.t3.prefix_embeds(tts.conds.t3, tts.text_tokens("Bonjour", "fr"), cfg=False)
            h = tts.t3.tfmr(x, torch.arange(x.shape[1]), tts.t3.tfmr.new_cache(1, x.shape[1])).mean(dim=(0, 1))
        tts.close()
        state = load_file(path)
        head = state["speech_head.weight"]
        head[6561] = head[6563:] = -40 * h / h.norm()
        save_file(state, path)
