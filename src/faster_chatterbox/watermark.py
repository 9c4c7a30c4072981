"""Perth implicit watermarking, applied to every output as upstream does.

Perth (`resemble-perth`) pulls in librosa and torchaudio, so it is the optional extra
`faster-chatterbox[watermark]`. When it is missing, output is left unwatermarked and that is said
once, loudly, when the model loads.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class Watermarker:
    """Wraps perth.PerthImplicitWatermarker; `available` is False when perth cannot be imported."""

    def __init__(self):
        self._perth = None
        try:
            import perth  # noqa: PLC0415 (heavy, optional)

            self._perth = perth.PerthImplicitWatermarker()
        except Exception as exc:  # ImportError, or perth's own dependencies failing to import
            log.warning("watermarking is OFF: the Perth watermarker cannot be loaded (%s). "
                        "Install it with `pip install 'faster-chatterbox[watermark]'`, or pass "
                        "watermark=False to silence this message.", exc)

    @property
    def available(self) -> bool:
        return self._perth is not None

    def apply_watermark(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """Perth's call, as upstream's `model.watermarker.apply_watermark(wav, sample_rate=sr)`."""
        if self._perth is None:
            return wav
        return np.asarray(self._perth.apply_watermark(wav, sample_rate=sample_rate), dtype=np.float32)

    __call__ = apply_watermark
