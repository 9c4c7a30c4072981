"""faster-chatterbox: a fast, faithful implementation of Resemble AI's Chatterbox text-to-speech."""

from .tts import ChatterboxTTS, Conditionals

__all__ = ["ChatterboxTTS", "Conditionals"]
__version__ = "0.1.0"
