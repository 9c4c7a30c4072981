"""faster-chatterbox: a fast, faithful implementation of Resemble AI's Chatterbox text-to-speech."""

from .pipeline import NoSpeechError, SynthesisResult
from .settings import CallSettings, EngineSettings
from .tts import ChatterboxTTS, Conditionals
from .voices import Voice, VoiceLibrary

__all__ = ["ChatterboxTTS", "Conditionals", "Voice", "VoiceLibrary", "SynthesisResult", "CallSettings",
           "EngineSettings", "NoSpeechError"]
__version__ = "0.1.0"
