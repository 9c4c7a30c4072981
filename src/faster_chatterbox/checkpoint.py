"""Chatterbox checkpoint files: where they come from and how their tensors reach our modules.

The official English checkpoint (Hugging Face `ResembleAI/chatterbox`) is five files, read unchanged:
  ve.safetensors     voice encoder (LSTM speaker embedding)
  t3_cfg.safetensors T3 (Llama backbone, conditioning encoder, embeddings, heads)
  s3gen.safetensors  S3Gen (S3 tokenizer, CAMPPlus, flow encoder + CFM estimator, HiFT)
  tokenizer.json     English text tokenizer
  conds.pt           the built-in voice (T3 and S3Gen conditionals)
Weights are matched by name. Every learned tensor must be present with its shape; upstream loads
s3gen.safetensors non-strictly, so keys that no module of ours uses are skipped with a log line,
and buffers we recompute (mel filters, windows) are not read from the file.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)

REPO_ID = "ResembleAI/chatterbox"
TURBO_REPO_ID = "ResembleAI/chatterbox-turbo"  # holds the meanflow decoder, s3gen_meanflow.safetensors
RANDOM_MARKER = "RANDOM-WEIGHTS.txt"  # written by init-random: every load warns that the audio will be noise
CHECKPOINT_FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json", "conds.pt")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def _short_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


@contextmanager
def skip_weight_init():
    """Build modules without running torch.nn.init: their weights are about to be loaded anyway.

    Random init of the ~800 M parameters costs ~10 s on a 2-core CPU; tensors are left uninitialised,
    which is safe because `load_weights` insists on a value for every one of them.
    """
    names = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
             "xavier_normal_", "zeros_", "ones_", "constant_", "orthogonal_")
    saved = {name: getattr(nn.init, name) for name in names}
    for name in names:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def check_checkpoint_dir(ckpt_dir: str | Path) -> Path:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist")
    missing = [name for name in CHECKPOINT_FILES if name != "conds.pt" and not (ckpt_dir / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint directory {ckpt_dir} lacks {', '.join(missing)}")
    return ckpt_dir


def download_checkpoint(repo_id: str = REPO_ID, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Fetch the checkpoint files through the Hugging Face cache and return their directory.

    Honours HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE=1 (then only the cache is consulted).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    paths = []
    for name in CHECKPOINT_FILES:
        try:
            paths.append(Path(hf_hub_download(repo_id=repo_id, filename=name, revision=revision, cache_dir=cache_dir)))
        except EntryNotFoundError as exc:
            if isinstance(exc, LocalEntryNotFoundError):  # offline, or the hub unreachable, and not cached
                raise _download_error(name, repo_id, revision, exc) from exc
            if name == "conds.pt":  # the built-in voice is optional
                continue
            raise CheckpointError(f"{repo_id} (revision {revision or 'main'}) has no file {name}") from None
        except Exception as exc:  # no network, unknown repo or revision, ...
            raise _download_error(name, repo_id, revision, exc) from exc
    return paths[0].parent


def download_file(name: str, repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """One file through the Hugging Face cache (e.g. the meanflow decoder from TURBO_REPO_ID)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=name, revision=revision, cache_dir=cache_dir))
    except Exception as exc:  # no network, not cached, unknown repo or file
        raise _download_error(name, repo_id, revision, exc) from exc


def _download_error(name: str, repo_id: str, revision: str | None, exc: Exception) -> CheckpointError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = "HF_HUB_OFFLINE is set and the file is not in the cache" if offline else f"{type(exc).__name__}: {exc}"
    return CheckpointError(
        f"cannot download {name} from the Hugging Face hub ({repo_id}, revision {revision or 'main'}): {why}. "
        "Without network, pass a local checkpoint directory (--checkpoint DIR / from_local(DIR)); "
        "`faster-chatterbox init-random DIR` makes a random-weight one for testing.")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc


def _rename_legacy_weight_norm(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Map old-style weight norm names (`w.weight_g`, `w.weight_v`) onto parametrization names."""
    renamed = {}
    for key, value in state.items():
        for old, new in ((".weight_g", ".parametrizations.weight.original0"),
                         (".weight_v", ".parametrizations.weight.original1")):
            if key.endswith(old) and key[: -len(old)] + new in wanted:
                key = key[: -len(old)] + new
        renamed[key] = value
    return renamed


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                 ignore_unexpected: bool = False) -> None:
    """Copy `state` into `module` by name, or raise one CheckpointError naming every bad key.

    Every entry of module.state_dict() (learned parameters and persistent buffers such as
    BatchNorm statistics) must be present with the right shape; BatchNorm's `num_batches_tracked`
    counters are not needed for inference and may be absent.
    """
    own = module.state_dict()
    state = _rename_legacy_weight_norm(state, set(own))
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
    unexpected = [k for k in state if k not in own]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors: {_short_list(missing)}")
    if misshaped:
        problems.append(f"{len(misshaped)} tensors with the wrong shape: {_short_list(misshaped)}")
    if unexpected and not ignore_unexpected:
        problems.append(f"{len(unexpected)} unknown tensors: {_short_list(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    if unexpected:
        log.info("%s: ignoring %d tensors that no module uses: %s", source, len(unexpected), _short_list(unexpected))
    # assign=True adopts the loaded tensors instead of copying them (cast first where the dtype differs)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items() if k in own}, strict=False, assign=True)
