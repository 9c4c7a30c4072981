"""OpenAI's speech API as this server takes it: the request body and the voice names (models.py: the models).

`POST /v1/audio/speech` takes OpenAI's body unchanged (model, input, voice, instructions, response_format,
speed, stream_format) plus Chatterbox's controls (and the multilingual model's `language`) as extras in
the same body. Unknown fields are refused (400), as OpenAI refuses them: a misspelt `cfg_wieght` must not
pass silently. Which names and extras the loaded model takes is models.py's to say.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .encode import FORMATS, MAX_SPEED, MIN_SPEED
from .errors import EXTRAS  # the Chatterbox controls a request may set, passed to generate_stream as they are
from .models import OPENAI_MODELS

# OpenAI's voice names: each is the built-in voice unless the voice library holds a voice of that name.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer",
                 "verse", "marin", "cedar")
DEFAULT_VOICE = "default"  # the checkpoint's own voice (conds.pt)


class VoiceId(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description=f"the loaded model's name (chatterbox, turbo, nano, multilingual or flash: "
                                   f"GET /v1/models) or one of OpenAI's, {', '.join(OPENAI_MODELS)}, mapped to it",
                       examples=["tts-1"])
    input: str = Field(description="the text to speak (at most --max-input-chars characters, 4096 by default)",
                       examples=["Hello there."])
    voice: str | VoiceId = Field(
        description="an OpenAI voice name (the built-in voice unless the library has one of that name), "
                    f"'{DEFAULT_VOICE}', or a library voice; also as {{\"id\": name}}", examples=["alloy"])
    instructions: str | None = Field(None, max_length=4096,
                                     description="accepted for compatibility and unused: Chatterbox takes no "
                                                 "style prompt (use exaggeration, cfg_weight)")
    response_format: Literal[FORMATS] = Field("mp3", description="pcm: raw 24 kHz 16-bit little-endian mono")
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, description="tempo; pitch is kept (no resampling)")
    stream_format: Literal["audio", "sse"] = Field(
        "audio", description="audio: the bytes as they are made (chunked); sse: speech.audio.delta events "
                             "with base64 audio, then speech.audio.done with usage")
    language: str | None = Field(None, min_length=1, max_length=16,
                                 description="extra: the multilingual model's language id (default en; GET /info "
                                             "lists the loaded model's); the other models speak en only")
    stream: bool = Field(True, description="extra: false sends one whole file (exact WAV header, "
                                           "Content-Length) once the audio is complete")
    # Chatterbox's controls (extras); None: the model's defaults
    exaggeration: float | None = Field(None, ge=0.0, le=4.0, description="emotion intensity (0.5 neutral)")
    cfg_weight: float | None = Field(None, ge=0.0, le=10.0, description="classifier-free guidance weight")
    # lower bounds as the engine's (engine/sampling.py): below them the logits turn inf and NaN, which would
    # fail the whole T3 batch, other requests included (found by schemathesis)
    temperature: float | None = Field(None, ge=0.01, le=5.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=0.1, le=10.0)
    seed: int | None = Field(None, ge=0, lt=2**64, description="the same seed gives the same audio, alone or "
                                                               "beside other requests")
    optimize_quality: bool | None = Field(None, description="post-process (loudness, de-click, trim)")
    max_new_tokens: int | None = Field(None, ge=1, le=4096,
                                       description="each chunk's speech-token cap (25 per second of speech)")
    # Chatterbox-Flash's own decoding controls (its reference's names; the other models refuse them)
    num_steps: int | None = Field(None, ge=1, le=64, description="flash: denoising steps per block")
    cfg_scale: float | None = Field(None, ge=0.0, le=100.0, description="flash: classifier-free guidance scale")

    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice

    def extras(self, defaults: dict) -> dict:
        """The Chatterbox controls given, with `defaults` (the model name's, models.model_defaults) under them."""
        given = {name: getattr(self, name) for name in EXTRAS if getattr(self, name) is not None}
        return {**defaults, **given}
