"""Voices as values: `Voice` (one speaker's conditionals) and `VoiceLibrary` (a folder of named voices).

A Voice is passed per call (`generate(..., voice=...)`); the call's exaggeration is applied to a copy, so
concurrent calls never see each other's voice. Saved and loaded in upstream's `conds.pt` format.

A VoiceLibrary is a folder a server (or a user) keeps voices in: `NAME.pt` (a saved Voice) or `NAME.wav`
/ `.flac` / `.ogg` / `.mp3` (a reference clip, turned into a voice on first use and cached by content in
`.cache/`). Names are checked, writes are atomic, clips are cached by a hash of their bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .models.t3 import T3Cond

CLIP_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
VOICE_SUFFIX = ".pt"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}")


@dataclass(frozen=True)
class Voice:
    """T3's conditionals and S3Gen's reference (prompt tokens, prompt mel, x-vector) of one speaker."""

    t3: T3Cond
    gen: dict

    @property
    def exaggeration(self) -> float:
        return float(self.t3.emotion_adv.reshape(-1)[0])

    def with_exaggeration(self, exaggeration: float) -> Voice:
        """This voice with T3's emotion control at `exaggeration` (self when it is already there)."""
        if exaggeration == self.exaggeration:
            return self
        t3 = self.t3
        emotion = torch.full((1, 1, 1), float(exaggeration), device=t3.speaker_emb.device)
        return Voice(T3Cond(speaker_emb=t3.speaker_emb, cond_prompt_speech_tokens=t3.cond_prompt_speech_tokens,
                            emotion_adv=emotion), self.gen)

    def to(self, device) -> Voice:
        gen = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.gen.items()}
        return Voice(self.t3.to(device=device), gen)

    def save(self, path: str | Path) -> None:
        """Write upstream's conds.pt format, whole or not at all."""
        path = Path(path)
        staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            torch.save({"t3": dict(self.t3.__dict__), "gen": self.gen}, staging)
            os.replace(staging, path)
        finally:
            staging.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path, map_location="cpu") -> Voice:
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
            return cls(T3Cond(**data["t3"]), dict(data["gen"]))
        except Exception as exc:
            raise CheckpointError(f"{path} is not a Chatterbox voice file (conds.pt): {exc}") from exc


def check_voice_name(name: str) -> str:
    """`name` when it is a valid voice name (1-64 letters, digits, space, _ . -, starting with a letter or
    digit: a file name on every system), else a ValueError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith((".", " ")):
        raise ValueError(f"invalid voice name {name!r}: use 1-64 letters, digits, spaces, '_', '.' or '-', "
                         "starting with a letter or digit")
    return name


def clip_digest(clip: Path) -> str:
    """A content hash of a clip file, read in blocks (an hour-long clip is never in memory at once)."""
    with open(clip, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:32]


class VoiceLibrary:
    """Named voices in folder `root`. make_voice(clip path) -> Voice turns a clip into a voice (the engine's
    `voice_from_clip`); `variant` names how it does (the cache keeps one file per clip and variant)."""

    def __init__(self, root: str | Path, make_voice: Callable[[Path], Voice], variant: str = "default",
                 device: str | torch.device = "cpu"):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.make_voice, self.variant, self.device = make_voice, variant, device
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The voices in the library, sorted."""
        found = {p.stem for p in self.root.iterdir()
                 if p.is_file() and p.suffix.lower() in (*CLIP_SUFFIXES, VOICE_SUFFIX) and _NAME.fullmatch(p.stem)}
        return sorted(found)

    def __contains__(self, name: str) -> bool:
        return self._file(name) is not None

    def get(self, name: str) -> Voice:
        """The voice `name`; a KeyError when there is none."""
        path = self._file(check_voice_name(name))
        if path is None:
            raise KeyError(f"no voice named {name!r} in {self.root}")
        if path.suffix == VOICE_SUFFIX:
            return Voice.load(path, map_location=self.device)
        return self._from_clip(path)

    def add_clip(self, name: str, data: bytes, suffix: str, *, overwrite: bool = False) -> Voice:
        """Store a reference clip's bytes (a `suffix` file) as voice `name` and return its voice; the clip is
        checked (turned into a voice) before anything is stored."""
        check_voice_name(name)
        suffix = suffix.lower()
        if suffix not in CLIP_SUFFIXES:
            raise ValueError(f"unsupported clip format {suffix!r}: use one of {', '.join(CLIP_SUFFIXES)}")
        with self._lock:
            if not overwrite and self._file(name) is not None:
                raise FileExistsError(f"a voice named {name!r} exists already")
            staging = self.root / f".{name}.{os.getpid()}.upload{suffix}"
            try:
                staging.write_bytes(data)
                voice = self._from_clip(staging)  # raises a ValueError for an unusable clip
                self._remove(name)
                os.replace(staging, self.root / f"{name}{suffix}")
            finally:
                staging.unlink(missing_ok=True)
        return voice

    def add_voice(self, name: str, voice: Voice, *, overwrite: bool = False) -> None:
        """Store a computed voice as `name`."""
        check_voice_name(name)
        with self._lock:
            if not overwrite and self._file(name) is not None:
                raise FileExistsError(f"a voice named {name!r} exists already")
            self._remove(name)
            voice.save(self.root / f"{name}{VOICE_SUFFIX}")

    def delete(self, name: str) -> None:
        """Remove voice `name`; a KeyError when there is none."""
        check_voice_name(name)
        with self._lock:
            if not self._remove(name):
                raise KeyError(f"no voice named {name!r} in {self.root}")

    def _file(self, name: str) -> Path | None:
        for suffix in (VOICE_SUFFIX, *CLIP_SUFFIXES):
            for candidate in (self.root / f"{name}{suffix}", self.root / f"{name}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
        return None

    def _remove(self, name: str) -> bool:
        removed = False
        while (path := self._file(name)) is not None:
            path.unlink()
            removed = True
        return removed

    def _from_clip(self, clip: Path) -> Voice:
        """A clip's voice, from the content-hash cache or computed and cached."""
        cached = self.root / ".cache" / f"{clip_digest(clip)}-{self.variant}{VOICE_SUFFIX}"
        if cached.is_file():
            return Voice.load(cached, map_location=self.device)
        voice = self.make_voice(clip)
        cached.parent.mkdir(exist_ok=True)
        voice.save(cached)
        return voice
