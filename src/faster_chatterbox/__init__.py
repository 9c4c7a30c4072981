"""faster-chatterbox: a fast, faithful implementation of Resemble AI's Chatterbox text-to-speech."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tts import ChatterboxTTS, Conditionals

__all__ = ["ChatterboxTTS", "Conditionals"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The API is imported on first use: `python -m faster_chatterbox.cli` and the `faster-chatterbox` script
    # import this package before the CLI's main() runs, and main() must see a Ctrl-C during the seconds that
    # importing torch and the models takes.
    if name in __all__:
        from . import tts

        return getattr(tts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
