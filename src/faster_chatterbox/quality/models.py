"""Model-based metrics: speaker similarity (the checkpoint's own encoders, resemblyzer) and transcription.

The checkpoint's encoders are always available. resemblyzer (ships its weights) and faster-whisper /
openai-whisper (need their model files cached) are optional: loading them raises MissingDependency.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..audio.io import resample
from .metrics import MissingDependency

S3_SR = 16000  # both of the checkpoint's speaker encoders take 16 kHz audio


def _unit(v) -> np.ndarray:
    v = np.asarray(torch.as_tensor(v).detach().float().cpu(), dtype=np.float64).reshape(-1)
    return v / max(np.linalg.norm(v), 1e-12)


class SpeakerScorer:
    """Cosine similarity of clips to a voice, by the checkpoint's voice encoder (T3's speaker embedding)
    and CAMPPlus (S3Gen's x-vector), plus resemblyzer when it is installed and a reference clip is given.

    The voice's references are the embeddings the model conditions on (tts.conds), so the built-in voice
    works too. The encoders are copied in float32 so that every setting's output is scored alike.
    """

    def __init__(self, tts, voice_wav: np.ndarray | None = None, voice_sr: int = S3_SR):
        if tts.conds is None:
            raise ValueError("no voice to score against: the model has no conditionals")
        self.ve = copy.deepcopy(tts.ve).float().eval()
        self.campplus = copy.deepcopy(tts.s3gen.speaker_encoder).float().eval()
        self.refs = {"ve": _unit(tts.conds.t3.speaker_emb), "campplus": _unit(tts.conds.gen["embedding"])}
        self.resemblyzer = None
        if voice_wav is not None:
            try:
                self.resemblyzer = resemblyzer_embedder()
            except MissingDependency:
                pass
            else:
                self.refs["resemblyzer"] = self.resemblyzer(resample(voice_wav, voice_sr, S3_SR))

    @torch.inference_mode()
    def embeddings(self, wav: np.ndarray, sr: int) -> dict[str, np.ndarray]:
        wav16 = resample(np.asarray(wav, dtype=np.float32), sr, S3_SR)
        device = next(self.campplus.parameters()).device
        out = {"ve": _unit(self.ve.embeds_from_wavs([wav16], sample_rate=S3_SR, as_spk=True)),
               "campplus": _unit(self.campplus.inference(torch.from_numpy(wav16)[None].to(device)))}
        if self.resemblyzer is not None:
            out["resemblyzer"] = self.resemblyzer(wav16)
        return out

    def similarity(self, wav: np.ndarray, sr: int) -> dict[str, float]:
        """{"ve": cos, "campplus": cos[, "resemblyzer": cos]} of `wav` to the voice."""
        return {name: float(emb @ self.refs[name]) for name, emb in self.embeddings(wav, sr).items()}


def resemblyzer_embedder():
    """A function 16 kHz mono clip -> unit resemblyzer embedding (256,); MissingDependency without it."""
    try:
        from resemblyzer import VoiceEncoder, preprocess_wav
    except ImportError as exc:
        raise MissingDependency("speaker similarity by resemblyzer needs `pip install resemblyzer`") from exc
    encoder = VoiceEncoder(device="cpu", verbose=False)
    return lambda wav16: _unit(encoder.embed_utterance(preprocess_wav(wav16, source_sr=S3_SR)))


def load_transcriber(model: str):
    """A function (clip, sr) -> transcript by faster-whisper, else openai-whisper, with the named model
    (e.g. "base.en") from the local cache only. MissingDependency when neither package or model is there."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        pass
    else:
        try:
            asr = WhisperModel(model, device="cpu", compute_type="int8", local_files_only=True)
        except Exception as exc:  # missing files surface as several exception types
            raise MissingDependency(f"faster-whisper model {model!r} is not available offline: {exc}") from exc
        return lambda wav, sr: " ".join(s.text for s in asr.transcribe(
            resample(np.asarray(wav, dtype=np.float32), sr, S3_SR), language="en")[0])
    try:
        import whisper
    except ImportError as exc:
        raise MissingDependency("word error rate needs faster-whisper or openai-whisper "
                                "(pip install faster-whisper)") from exc
    try:
        asr = whisper.load_model(model, device="cpu")
    except Exception as exc:  # a download attempt fails offline
        raise MissingDependency(f"whisper model {model!r} is not available offline: {exc}") from exc
    return lambda wav, sr: asr.transcribe(resample(np.asarray(wav, dtype=np.float32), sr, S3_SR),
                                          language="en", fp16=False)["text"]
