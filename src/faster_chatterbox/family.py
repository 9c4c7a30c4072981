"""Which model of the family to load, by name: what `speak`, `render-book` and `serve` share.

    tts = load_model("turbo", checkpoint=None, device="cpu")       # the hub release of that model
    tts = load_model("multilingual", random_checkpoint("small", "multilingual"))

Names (settings.MODEL_NAMES): chatterbox (English), turbo and nano (ChatterboxTurboTTS, GPT-2 T3),
multilingual (ChatterboxMultilingualTTS), flash (ChatterboxFlashTTS). Every facade is imported only when
its model is asked for: importing this module costs nothing.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from .settings import MODEL_NAMES, TURBO_MODELS

log = logging.getLogger("faster_chatterbox")
RANDOM_SIZES = ("full", "small")


def cache_dir() -> Path:
    return Path(os.environ.get("FASTER_CHATTERBOX_CACHE", Path.home() / ".cache" / "faster-chatterbox"))


def random_checkpoint(size: str, model: str = "chatterbox") -> Path:
    """A random-weight checkpoint of `model`'s layout, written once under the cache and reused: size "full"
    (the English one is what `bench --random-weights` uses, random-full-seed0, ~3 GB) or "small" (test sizes)."""
    from .random_checkpoint import write_random_checkpoint

    if size not in RANDOM_SIZES:
        raise ValueError(f"random-weight size must be one of {', '.join(RANDOM_SIZES)}, got {size!r}")
    _check_name(model)
    name = f"random-{size}-seed0" if model == "chatterbox" else f"random-{model}-{size}-seed0"
    target = cache_dir() / name
    if not target.is_dir():  # written whole: a staging directory renamed once complete
        log.warning("writing a %s RANDOM-weight %s checkpoint to %s (once)", size, model, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        write_random_checkpoint(staging, seed=0, small=size == "small", model=model)
        staging.rename(target)
    return target


def load_model(model: str, checkpoint: str | Path | None = None, repo_id: str | None = None, *,
               device: str = "auto", preset: str | None = None, watermark: bool = True, decoder: str = "cfm"):
    """The facade of `model` from a local `checkpoint` directory, else from the hub (`repo_id`: another
    repository than the model's own; not for turbo/nano). decoder: chatterbox's S3Gen decoder ("cfm" or
    "meanflow"); turbo, nano and flash always have their meanflow one, multilingual its cfm one."""
    _check_name(model)
    if checkpoint is not None and repo_id is not None:
        raise ValueError("give either a checkpoint directory or a hub repo id, not both")
    if decoder != "cfm" and model in ("multilingual", "flash"):
        raise ValueError(f"--decoder {decoder} applies to --model chatterbox only")
    options = dict(device=device, watermark=watermark) | ({} if preset is None else {"preset": preset})
    hub = {} if repo_id is None else {"repo_id": repo_id}
    if model in TURBO_MODELS:
        from .tts_turbo import ChatterboxTurboTTS as cls

        options["nano"] = model == "nano"
        if hub:
            raise ValueError(f"a hub repo id does not apply to --model {model} (its release is fixed)")
    elif model == "multilingual":
        from .tts_multilingual import ChatterboxMultilingualTTS as cls
    elif model == "flash":
        from .tts_flash import ChatterboxFlashTTS as cls
    else:
        from .tts import ChatterboxTTS as cls

        options["decoder"] = decoder
    if checkpoint is not None:
        return cls.from_local(checkpoint, **options)
    return cls.from_pretrained(**options, **hub)


def _check_name(model: str) -> None:
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}: choose one of {', '.join(MODEL_NAMES)}")
