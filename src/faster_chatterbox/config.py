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
from .models.gpt2 import GPT2Config
from .models.hift import HiFTConfig
from .models.llama import LlamaConfig
from .models.s3_tokenizer import S3TokenizerConfig
from .models.s3gen import MEANFLOW_FILE, S3Gen, S3GenConfig, meanflow_config
from .models.t3 import T3, T3Config
from .models.voice_encoder import VoiceEncoder, VoiceEncoderConfig


@dataclass
class ChatterboxConfig:
    t3: T3Config = field(default_factory=T3Config)
    s3gen: S3GenConfig = field(default_factory=S3GenConfig)
    ve: VoiceEncoderConfig = field(default_factory=VoiceEncoderConfig)
    t3_file: str = "t3_cfg.safetensors"  # Turbo: t3_turbo_v1.safetensors, Nano: t3_nano_v1.safetensors
    s3gen_file: str = "s3gen.safetensors"  # Turbo and Nano: s3gen_meanflow.safetensors

    def build_modules(self) -> dict[str, nn.Module]:
        """The modules of each checkpoint file, freshly initialised."""
        return {"ve.safetensors": VoiceEncoder(self.ve), self.t3_file: T3(self.t3), self.s3gen_file: S3Gen(self.s3gen)}

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


def turbo_config(nano: bool = False, small: bool = False) -> ChatterboxConfig:
    """Chatterbox-Turbo's files (GPT-2 medium T3) or, with `nano`, Nano's (GPT-2 small); `small`: tiny sizes
    for tests (the GPT-2 narrow and shallow, the rest as `small_config`), vocabularies as the official ones."""
    base = small_config() if small else ChatterboxConfig()
    if small:
        t3 = T3Config.turbo(GPT2Config(dim=64, n_layers=1 if nano else 2, n_heads=2))
    else:
        t3 = T3Config.nano() if nano else T3Config.turbo()
    return ChatterboxConfig(t3=t3, s3gen=meanflow_config(base.s3gen), ve=base.ve,
                            t3_file="t3_nano_v1.safetensors" if nano else "t3_turbo_v1.safetensors",
                            s3gen_file=MEANFLOW_FILE)


def flash_config(small: bool = False) -> ChatterboxConfig:
    """Chatterbox-Flash's files: the Llama T3 with the [MASK] row of its speech embedding in
    t3_flash.safetensors, a meanflow S3Gen in s3gen.safetensors; `small`: tiny sizes as `small_config`."""
    base = small_config() if small else ChatterboxConfig()
    return ChatterboxConfig(t3=dataclasses.replace(base.t3, mask_token=True), s3gen=meanflow_config(base.s3gen),
                            ve=base.ve, t3_file="t3_flash.safetensors")
