"""The voices a request may name, and how a name becomes a Voice.

A request names a voice, never a path: OpenAI's names and `default` are the built-in voice (the
checkpoint's conds.pt) unless the voice library holds a voice of that name; any other name must be in
the library. Resolving the name to a file here keeps `generate_stream`'s clip-path form out of reach
of clients.
"""

from __future__ import annotations

from ..voices import Voice, VoiceLibrary, check_voice_name
from .errors import APIError, bad_request
from .schema import DEFAULT_VOICE, OPENAI_VOICES

BUILTIN_NAMES = (DEFAULT_VOICE, *OPENAI_VOICES)


class VoiceCatalog:
    def __init__(self, builtin: Voice | None, library: VoiceLibrary | None):
        self.builtin, self.library = builtin, library

    def check(self, name: str) -> str:
        """`name` if a request may speak in it, else a 400 naming the voices there are."""
        if self.library is not None and _valid(name) and name in self.library:
            return name
        if name in BUILTIN_NAMES:
            if self.builtin is None:
                raise bad_request(f"voice {name!r} is the built-in voice, and this checkpoint has none (no "
                                  "conds.pt): upload a voice or name a library voice", "voice", "voice_not_found")
            return name
        known = ", ".join(self.names())
        raise bad_request(f"unknown voice {name!r}; voices: {known}", "voice", "voice_not_found")

    def resolve(self, name: str) -> Voice:
        """The Voice of a checked name (may compute a library clip's voice once: call it off the event loop)."""
        if self.library is not None and _valid(name) and name in self.library:
            try:
                return self.library.get(name)
            except KeyError:  # deleted since it was checked
                raise bad_request(f"voice {name!r} was deleted", "voice", "voice_not_found") from None
        if self.builtin is None:
            raise bad_request(f"unknown voice {name!r}", "voice", "voice_not_found")
        return self.builtin

    def names(self) -> list[str]:
        return [*BUILTIN_NAMES, *[n for n in self.library_names() if n not in BUILTIN_NAMES]]

    def library_names(self) -> list[str]:
        return self.library.names() if self.library is not None else []

    def listing(self) -> dict:
        """GET /v1/audio/voices: an OpenAI-style list; `type` says built-in or library (`custom`)."""
        custom = set(self.library_names())
        data = [{"id": n, "object": "voice", "type": "custom" if n in custom else "builtin"} for n in self.names()
                if n in custom or self.builtin is not None]
        return {"object": "list", "data": data}

    def require_library(self) -> VoiceLibrary:
        if self.library is None:
            raise APIError(404, "this server keeps no voice library (start it with --voices-dir)",
                           code="no_voice_library")
        return self.library


def _valid(name: str) -> bool:
    try:
        check_voice_name(name)
        return True
    except ValueError:
        return False
