"""faster-chatterbox: a fast, faithful implementation of Resemble AI's Chatterbox text-to-speech."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pipeline import NoSpeechError, SynthesisResult
    from .settings import CallSettings, EngineSettings
    from .tts import ChatterboxTTS, Conditionals
    from .tts_turbo import ChatterboxTurboTTS
    from .tts_multilingual import ChatterboxMultilingualTTS
    from .vc import ChatterboxVC
    from .voices import Voice, VoiceLibrary

_EXPORTS = {"ChatterboxTTS": "tts", "Conditionals": "tts", "ChatterboxTurboTTS": "tts_turbo",
            "ChatterboxMultilingualTTS": "tts_multilingual", "ChatterboxVC": "vc", "Voice": "voices",
            "VoiceLibrary": "voices", "SynthesisResult": "pipeline", "NoSpeechError": "pipeline",
            "CallSettings": "settings", "EngineSettings": "settings"}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    # The API is imported on first use: `python -m faster_chatterbox.cli` and the `faster-chatterbox` script
    # import this package before the CLI's main() runs, and main() must see a Ctrl-C during the seconds that
    # importing torch and the models takes.
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
