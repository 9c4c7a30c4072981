"""The whole model's configuration: the official sizes by default, JSON for the small test variant."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .models.campplus import CAMPPlusConfig
from .models.cfm_estimator import CFMEstimatorConfig
from .models.flow import FlowConfig
from .models.flow_encoder import FlowEncoderConfig
from .models.hift import HiFTConfig
from .models.llama import LlamaConfig
from .models.s3_tokenizer import S3TokenizerConfig
from .models.s3gen import S3Gen, S3GenConfig, meanflow_config
from .models.t3 import T3, T3Config
from .models.voice_encoder import VoiceEncoder, VoiceEncoderConfig


@dataclass
class ChatterboxConfig:
    t3: T3Config = field(default_factory=T3Config)
    s3gen: S3GenConfig = field(default_factory=S3GenConfig)
    ve: VoiceEncoderConfig = field(default_factory=VoiceEncoderConfig)
    # Chatterbox-Flash's layout: t3_flash.safetensors (T3 with the [MASK] row), s3gen.safetensors a meanflow one
    flash: bool = False

    @property
    def t3_file(self) -> str:
        return "t3_flash.safetensors" if self.flash else "t3_cfg.safetensors"

    def build_modules(self) -> dict[str, nn.Module]:
        """The modules of each checkpoint file, freshly initialised."""
        t3 = T3(dataclasses.replace(self.t3, mask_token=True) if self.flash else self.t3)
        s3gen = S3Gen(meanflow_config(self.s3gen) if self.flash else self.s3gen)
        return {"ve.safetensors": VoiceEncoder(self.ve), self.t3_file: t3, "s3gen.safetensors": s3gen}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ChatterboxConfig:
        try:
            return _from_dict(cls, json.loads(Path(path).read_text()))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path} is not a valid faster-chatterbox config: {exc}") from exc


def _from_dict(cls, data: dict):
    hints = typing.get_type_hints(cls)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise KeyError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            value = _from_dict(kind, value)
        elif typing.get_origin(kind) is tuple:
            value = _as_tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def small_config() -> ChatterboxConfig:
    """Tiny sizes (a few M parameters) with the official vocabularies, rates and interfaces."""
    return ChatterboxConfig(
        t3=T3Config(llama=LlamaConfig(dim=128, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=64, ffn_dim=256)),
        s3gen=S3GenConfig(
            tokenizer=S3TokenizerConfig(n_audio_state=128, n_audio_head=2, n_audio_layer=1),
            speaker_encoder=CAMPPlusConfig(m_channels=8, init_channels=32, growth_rate=8, bn_size=2,
                                           block_layers=(1, 1, 1)),
            flow=FlowConfig(token_dim=64, encoder=FlowEncoderConfig(input_size=64, hidden_dim=64, num_heads=2,
                                                                    ffn_dim=128, num_blocks=1, num_up_blocks=1),
                            estimator=CFMEstimatorConfig(hidden_dim=64, num_heads=2, head_dim=32, n_blocks=1,
                                                         num_mid_blocks=1)),
            hift=HiFTConfig(base_channels=32, f0_channels=32),
        ),
    )
