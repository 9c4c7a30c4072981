"""Chatterbox checkpoint files: where they come from and how their tensors reach our modules.

The official English checkpoint (Hugging Face `ResembleAI/chatterbox`) is five files, read unchanged:
  ve.safetensors     voice encoder (LSTM speaker embedding)
  t3_cfg.safetensors T3 (Llama backbone, conditioning encoder, embeddings, heads)
  s3gen.safetensors  S3Gen (S3 tokenizer, CAMPPlus, flow encoder + CFM estimator, HiFT)
  tokenizer.json     English text tokenizer
  conds.pt           the built-in voice (T3 and S3Gen conditionals)
Chatterbox-Turbo (`ResembleAI/chatterbox-turbo`) and -Nano (`ResembleAI/chatterbox-nano`): ve.safetensors,
t3_turbo_v1.safetensors / t3_nano_v1.safetensors (GPT-2 T3), s3gen_meanflow.safetensors, conds.pt and
the GPT-2 tokenizer files (vocab.json, merges.txt, added_tokens.json, tokenizer_config.json,
special_tokens_map.json; TURBO_FILES / NANO_FILES).
Weights are matched by name. Every learned tensor must be present with its shape; upstream loads
s3gen.safetensors non-strictly, so keys that no module of ours uses are skipped with a log line,
and buffers we recompute (mel filters, windows) are not read from the file.
"""

from __future__ import annotations

import logging
import pickle
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)

REPO_ID = "ResembleAI/chatterbox"
TURBO_REPO_ID = "ResembleAI/chatterbox-turbo"  # holds the meanflow decoder, s3gen_meanflow.safetensors
FLASH_REPO_ID = "ResembleAI/chatterbox-flash"  # Chatterbox-Flash: t3_flash.safetensors, a meanflow s3gen
RANDOM_MARKER = "RANDOM-WEIGHTS.txt"  # written by init-random: every load warns that the audio will be noise
CHECKPOINT_FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json", "conds.pt")
NANO_REPO_ID = "ResembleAI/chatterbox-nano"
GPT2_TOKENIZER_FILES = ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json",
                        "special_tokens_map.json")
TURBO_FILES = ("ve.safetensors", "t3_turbo_v1.safetensors", "s3gen_meanflow.safetensors", *GPT2_TOKENIZER_FILES,
               "conds.pt")
NANO_FILES = tuple("t3_nano_v1.safetensors" if name == "t3_turbo_v1.safetensors" else name for name in TURBO_FILES)
# files a checkpoint may lack: the built-in voice, and the tokenizer files that only Hugging Face's loader reads
OPTIONAL_FILES = ("conds.pt", "tokenizer_config.json", "special_tokens_map.json")
# Chatterbox Multilingual (same repository): pickled state dicts for the voice encoder and S3Gen, a T3 per version
MTL_T3_FILES = {"v2": "t3_mtl23ls_v2.safetensors", "v3": "t3_mtl23ls_v3.safetensors"}
MTL_FILES = ("ve.pt", "s3gen.pt", "grapheme_mtl_merged_expanded_v1.json", "Cangjie5_TC.json", "conds.pt")
# upstream HEAD's single-language v3 fine-tunes (their file layout is assumed to be the multilingual one)
MTL_LANGUAGE_PACKS = {pack: f"ResembleAI/Chatterbox-Multilingual-{pack}"
                      for pack in ("zh-cmn", "es-mx-latam", "pt-br", "es-es", "pt-pt", "hi")}
FLASH_FILES = ("ve.safetensors", "t3_flash.safetensors", "s3gen.safetensors", "tokenizer.json", "conds.pt")


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


def check_checkpoint_dir(ckpt_dir: str | Path, files: tuple[str, ...] = CHECKPOINT_FILES,
                         optional: tuple[str, ...] = OPTIONAL_FILES) -> Path:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist")
    missing = [name for name in files if name not in optional and not (ckpt_dir / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint directory {ckpt_dir} lacks {', '.join(missing)}")
    return ckpt_dir


def download_checkpoint(repo_id: str = REPO_ID, revision: str | None = None,
                        cache_dir: str | Path | None = None, files: tuple[str, ...] = CHECKPOINT_FILES) -> Path:
    """Fetch the checkpoint `files` through the Hugging Face cache and return their directory (see `_fetch_files`)."""
    return _fetch_files(files, repo_id, revision, cache_dir, optional=OPTIONAL_FILES)[0].parent


def download_file(name: str, repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """One file through the Hugging Face cache (e.g. the meanflow decoder from TURBO_REPO_ID)."""
    return _fetch_files((name,), repo_id, revision, cache_dir)[0]


def _fetch_files(names: tuple[str, ...], repo_id: str, revision: str | None = None,
                cache_dir: str | Path | None = None, optional: tuple[str, ...] = ()) -> list[Path]:
    """Paths of the files `names` of a hub repository, in order (an `optional` file the repository lacks is left out).

    Cache first (HF_HOME / HF_HUB_CACHE): when every file is cached, no network is used at all, so a revision
    moved on the hub is not picked up (pass `revision` to pin one). Otherwise one quick request checks that the
    hub (HF_ENDPOINT) answers, and then every file goes through hf_hub_download, which keeps them in one snapshot.
    Offline (HF_HUB_OFFLINE set, or no answer) it raises one CheckpointError at once.
    """
    from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cached = {name: try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision) for name in names}
    missing = [name for name, hit in cached.items()
               if not isinstance(hit, str) and not (hit is _CACHED_NO_EXIST and name in optional)]
    if not missing:
        return [Path(hit) for hit in cached.values() if isinstance(hit, str)]
    _check_hub_answers(missing, repo_id, revision)
    paths = []
    with _quiet_hub_retries():
        for name in names:
            try:
                paths.append(Path(hf_hub_download(repo_id=repo_id, filename=name, revision=revision,
                                                  cache_dir=cache_dir)))
            except EntryNotFoundError as exc:
                if isinstance(exc, LocalEntryNotFoundError):  # the connection was lost since the check
                    raise _download_error(name, repo_id, revision, exc) from exc
                if name in optional:
                    continue
                raise CheckpointError(f"{repo_id} (revision {revision or 'main'}) has no file {name}") from None
            except Exception as exc:  # unknown repo or revision, a gated repo, the hub failing, ...
                raise _download_error(name, repo_id, revision, exc) from exc
    return paths


HUB_CHECK_TIMEOUT_S = 3.0
_OFFLINE_ADVICE = ("Without network, pass a local checkpoint directory (--checkpoint DIR / from_local(DIR)); "
                   "`faster-chatterbox init-random DIR` makes a random-weight one for testing.")


def _check_hub_answers(missing: list[str], repo_id: str, revision: str | None) -> None:
    """Raise one CheckpointError unless the hub answers a HEAD request within HUB_CHECK_TIMEOUT_S.

    Offline, hf_hub_download retries for ~25 s before it fails. The request runs in a thread so that a name lookup
    hanging on a dead resolver, which no socket timeout covers, cannot hold us either.
    """
    from huggingface_hub import constants, get_session

    what = f"{', '.join(missing)} of {repo_id} (revision {revision or 'main'})"
    if constants.is_offline_mode():
        raise CheckpointError(f"HF_HUB_OFFLINE is set and the Hugging Face cache lacks {what}. {_OFFLINE_ADVICE}")
    failure: list[BaseException] = []

    def head() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=HUB_CHECK_TIMEOUT_S)
        except Exception as exc:  # httpx.ConnectError (no route, refused, name lookup failed), httpx.TimeoutException
            failure.append(exc)

    thread = threading.Thread(target=head, name="hub-check", daemon=True)
    thread.start()
    thread.join(HUB_CHECK_TIMEOUT_S)
    if thread.is_alive():
        failure.append(TimeoutError(f"no answer in {HUB_CHECK_TIMEOUT_S:g} s"))
    if failure:
        raise CheckpointError(f"cannot download {what}: the Hugging Face hub at {constants.ENDPOINT} does not "
                              f"answer ({type(failure[0]).__name__}: {failure[0]}). {_OFFLINE_ADVICE}")


@contextmanager
def _quiet_hub_retries():
    """Silence huggingface_hub's warning per retry of each file: a failure ends in one CheckpointError anyway."""
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(level)


def _download_error(name: str, repo_id: str, revision: str | None, exc: Exception) -> CheckpointError:
    return CheckpointError(f"cannot download {name} from the Hugging Face hub ({repo_id}, revision "
                           f"{revision or 'main'}): {type(exc).__name__}: {exc}. {_OFFLINE_ADVICE}")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc


def read_pickled_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved with torch.save (Multilingual's ve.pt, s3gen.pt), loaded with weights_only=True: a
    file that needs any object besides tensors and containers is refused (unpickling such objects can run
    code), as is one that is not a flat {name: tensor} dict."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} needs objects other than tensors to load; refused (weights_only): "
                              f"{str(exc).splitlines()[0]}") from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable torch.save file (truncated or corrupt?): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path} does not hold a state dict ({{name: tensor}}), but a {type(state).__name__}")
    return state


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
