"""T3: Chatterbox's text-to-speech-token model, a transformer over [conditioning | text | speech] embeddings.

The sequence T3 decodes is laid out as upstream's inference builds it. English and Multilingual (a Llama):

    cond (34) | text tokens + learned text positions (L) | BOS @ speech pos 0 | BOS @ speech pos 0 | tok_0 @ 1 | ...

(the start-of-speech token really is fed twice). Under classifier-free guidance the batch holds two rows
that differ only in the text: row 1 has its text token embeddings zeroed (the position embeddings stay).

Turbo and Nano (`T3Config.turbo()` / `.nano()`: a GPT-2, whose own learned positions count the whole
sequence) have no T3 position tables, no Perceiver, no exaggeration and no CFG:

    speaker (1) | 375 prompt speech tokens | text tokens (L, not wrapped) | BOS | tok_0 | tok_1 | ...
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor, nn

from .gpt2 import GPT2, GPT2Config
from .llama import Llama, LlamaConfig
from .perceiver import Perceiver


@dataclass
class T3Config:
    text_tokens_dict_size: int = 704
    speech_tokens_dict_size: int = 8194
    start_text_token: int = 255
    stop_text_token: int = 0
    start_speech_token: int = 6561
    stop_speech_token: int = 6562
    max_text_tokens: int = 2048
    max_speech_tokens: int = 4096
    speech_cond_prompt_len: int = 150
    speaker_embed_size: int = 256
    use_perceiver_resampler: bool = True
    perceiver_queries: int = 32
    perceiver_heads: int = 4
    emotion_adv: bool = True
    llama: LlamaConfig = field(default_factory=LlamaConfig)
    backbone: str = "llama"  # "llama" (`llama`) or "gpt2" (`gpt2`)
    gpt2: GPT2Config = field(default_factory=GPT2Config)
    learned_positions: bool = True  # T3's own text/speech position tables (GPT-2 brings its own positions)
    wrap_text: bool = True  # text tokens wrapped in start/stop text tokens (Turbo feeds the BPE ids alone)
    bos_twice: bool = True  # the decode feeds BOS again after the prefix's (upstream's Llama loop)
    # the repetition penalty's history holds BOS at every step (False: for token 0 only, as Turbo's loop)
    penalize_bos: bool = True
    # Chatterbox-Flash (block diffusion): the speech embedding has one more row, [MASK], id
    # speech_tokens_dict_size (the head still predicts speech_tokens_dict_size ids)
    mask_token: bool = False

    @classmethod
    def turbo(cls, gpt2: GPT2Config | None = None) -> T3Config:
        """Chatterbox-Turbo's T3 (t3_turbo_v1.safetensors): GPT-2 medium, 50276 BPE text ids, 6563 speech ids."""
        return cls(text_tokens_dict_size=50276, speech_tokens_dict_size=6563, speech_cond_prompt_len=375,
                   use_perceiver_resampler=False, emotion_adv=False, backbone="gpt2", gpt2=gpt2 or GPT2Config(),
                   learned_positions=False, wrap_text=False, bos_twice=False, penalize_bos=False)

    @classmethod
    def nano(cls) -> T3Config:
        """Chatterbox-Nano's T3 (t3_nano_v1.safetensors): Turbo's with GPT-2 small (12 x 768)."""
        return cls.turbo(GPT2Config(dim=768, n_layers=12, n_heads=12))

    @property
    def dim(self) -> int:
        return self.gpt2.dim if self.backbone == "gpt2" else self.llama.dim

    @property
    def mask_token_id(self) -> int:
        return self.speech_tokens_dict_size


@dataclass
class T3Cond:
    """Everything T3 is conditioned on besides the text; `T3Cond(**conds["t3"])` loads upstream's conds.pt."""

    speaker_emb: Tensor  # (B, speaker_embed_size) voice-encoder embedding
    clap_emb: Tensor | None = None  # never used by Chatterbox; must stay None
    cond_prompt_speech_tokens: Tensor | None = None  # (B, T) S3 tokens of the reference clip
    cond_prompt_speech_emb: Tensor | None = None  # (B, T, D) their embeddings, if already computed
    emotion_adv: Tensor | float = 0.5  # exaggeration, (B, 1, 1) or a number

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> T3Cond:
        """A copy on `device`; `dtype` applies to floating-point tensors only."""

        def cast(v):
            if not torch.is_tensor(v):
                return v
            return v.to(device=device, dtype=dtype if v.is_floating_point() else None)

        return replace(self, **{f.name: cast(getattr(self, f.name)) for f in fields(self)})


class LearnedPositionEmbedding(nn.Module):
    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(max_len, dim)

    def forward(self, positions: Tensor) -> Tensor:
        # positions: (S,) -> (S, D)
        return self.emb(positions)


class T3CondEnc(nn.Module):
    """Speaker embedding, Perceiver-resampled prompt speech and exaggeration -> conditioning positions."""

    def __init__(self, cfg: T3Config):
        super().__init__()
        dim = cfg.dim
        self.spkr_enc = nn.Linear(cfg.speaker_embed_size, dim)
        self.emotion_adv_fc = nn.Linear(1, dim, bias=False) if cfg.emotion_adv else None
        self.perceiver = (Perceiver(dim, cfg.perceiver_queries, cfg.perceiver_heads)
                          if cfg.use_perceiver_resampler else None)

    def forward(self, speaker_emb: Tensor, prompt_emb: Tensor | None, emotion_adv: Tensor | None) -> Tensor:
        # speaker_emb: (B, S_e); prompt_emb: (B, T, D) or None; emotion_adv: B values (any shape) or None
        parts = [self.spkr_enc(speaker_emb)[:, None]]  # (B, 1, D)
        if prompt_emb is not None:
            parts.append(self.perceiver(prompt_emb) if self.perceiver is not None else prompt_emb)  # (B, 32, D)
        if self.emotion_adv_fc is not None:
            parts.append(self.emotion_adv_fc(emotion_adv.view(-1, 1, 1)))  # (B, 1, D)
        return torch.cat(parts, dim=1)  # (B, len_cond, D)


class T3(nn.Module):
    def __init__(self, cfg: T3Config | None = None):
        super().__init__()
        self.cfg = cfg = cfg or T3Config()
        if cfg.backbone not in ("llama", "gpt2"):
            raise ValueError(f"unknown T3 backbone {cfg.backbone!r}: choose llama or gpt2")
        dim, gpt2 = cfg.dim, cfg.backbone == "gpt2"
        self.tfmr = GPT2(cfg.gpt2) if gpt2 else Llama(cfg.llama)
        self.cond_enc = T3CondEnc(cfg)
        self.text_emb = nn.Embedding(cfg.text_tokens_dict_size, dim)
        self.speech_emb = nn.Embedding(cfg.speech_tokens_dict_size + cfg.mask_token, dim)
        self.text_pos_emb = self.speech_pos_emb = None
        if cfg.learned_positions:
            self.text_pos_emb = LearnedPositionEmbedding(cfg.max_text_tokens + 2, dim)
            self.speech_pos_emb = LearnedPositionEmbedding(cfg.max_speech_tokens + 4, dim)
        self.text_head = nn.Linear(dim, cfg.text_tokens_dict_size, bias=False)  # unused at inference
        self.speech_head = nn.Linear(dim, cfg.speech_tokens_dict_size, bias=gpt2)  # upstream: a bias for GPT-2

    @property
    def max_speech_steps(self) -> int:
        """The most speech tokens one decode may sample (the learned speech positions, or the config's)."""
        return self.speech_pos_emb.emb.num_embeddings if self.speech_pos_emb is not None else self.cfg.max_speech_tokens

    @property
    def max_text_len(self) -> int:
        """The longest text input (start/stop tokens included where the text is wrapped)."""
        return self.text_pos_emb.emb.num_embeddings if self.text_pos_emb is not None else self.cfg.max_text_tokens + 2

    def speech_embeds(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens: (B, S) speech tokens at speech positions (S,) -> (B, S, D) (positions unused without tables)."""
        if self.speech_pos_emb is None:
            return self.speech_emb(tokens)
        return self.speech_emb(tokens) + self.speech_pos_emb(positions)

    def cond_embeds(self, cond: T3Cond) -> Tensor:
        """Conditioning positions (B, len_cond, D): speaker, 32 Perceiver latents if prompted, exaggeration."""
        assert cond.clap_emb is None, "CLAP conditioning is not part of Chatterbox"
        w = self.speech_emb.weight
        prompt_emb = cond.cond_prompt_speech_emb
        if prompt_emb is None and cond.cond_prompt_speech_tokens is not None:
            tokens = cond.cond_prompt_speech_tokens.to(w.device)  # (B, T)
            prompt_emb = self.speech_embeds(tokens, torch.arange(tokens.shape[1], device=w.device))
        emotion = None
        if self.cond_enc.emotion_adv_fc is not None:
            emotion = torch.as_tensor(cond.emotion_adv, device=w.device, dtype=w.dtype)
        speaker = cond.speaker_emb.to(device=w.device, dtype=w.dtype).view(-1, self.cfg.speaker_embed_size)
        if prompt_emb is not None:
            prompt_emb = prompt_emb.to(device=w.device, dtype=w.dtype)
        return self.cond_enc(speaker, prompt_emb, emotion)

    def prefix_embeds(self, cond: T3Cond, text_tokens: Tensor, *, cfg: bool) -> Tensor:
        """Prompt embeddings before the first decode step, (1 + cfg, len_cond + L + 1, D).

        text_tokens: (L,) already wrapped in start/stop text tokens. With `cfg` the second row is the
        unconditional one (text token embeddings zeroed, text positions kept).
        """
        device = self.speech_emb.weight.device
        rows = 2 if cfg else 1
        text_tokens = text_tokens.to(device)
        text = self.text_emb(text_tokens)[None].repeat(rows, 1, 1)  # (R, L, D)
        if cfg:
            text[1] = 0
        if self.text_pos_emb is not None:
            text = text + self.text_pos_emb(torch.arange(text_tokens.shape[0], device=device))
        cond_emb = self.cond_embeds(cond).expand(rows, -1, -1)  # (R, len_cond, D)
        bos = self.speech_embeds(self._bos(device), torch.zeros(1, dtype=torch.long, device=device))  # (1, 1, D)
        return torch.cat((cond_emb, text, bos.expand(rows, -1, -1)), dim=1)

    def decode_prefix(self, cond: T3Cond, text_tokens: Tensor, *, cfg: bool) -> Tensor:
        """What a decode prefills, (1 + cfg, P, D): `prefix_embeds`, and BOS again where the layout feeds it
        twice (at speech position 0). Its last position's logits are those of token 0."""
        prefix = self.prefix_embeds(cond, text_tokens, cfg=cfg)
        if not self.cfg.bos_twice:
            return prefix
        bos = self.speech_embeds(self._bos(prefix.device), torch.zeros(1, dtype=torch.long, device=prefix.device))
        return torch.cat((prefix, bos.expand(prefix.shape[0], -1, -1)), dim=1)

    def forward(self, cond: T3Cond, text_tokens: Tensor, speech_tokens: Tensor, *, cfg: bool = False) -> Tensor:
        """Teacher-forced speech logits in the decode layout, (1 + cfg, S + 1, speech vocab).

        speech_tokens: (S,) generated tokens (no BOS). Row r, index i holds the logits the decoder sees
        before sampling token i, i.e. after the decode prefix and tok_0 .. tok_{i-1}. One backbone forward
        over a KV cache of its own.
        """
        device = self.speech_emb.weight.device
        prefix = self.decode_prefix(cond, text_tokens, cfg=cfg)  # (R, P, D)
        tokens = speech_tokens.to(device)[None]  # (1, S), token i at speech position i + 1
        speech = self.speech_embeds(tokens, torch.arange(1, tokens.shape[1] + 1, device=device))
        x = torch.cat((prefix, speech.expand(prefix.shape[0], -1, -1)), dim=1)  # (R, P + S, D)
        cache = self.tfmr.new_cache(x.shape[0], x.shape[1])
        h = self.tfmr(x, torch.arange(x.shape[1], device=device), cache)
        return self.speech_head(h[:, prefix.shape[1] - 1 :])

    def _bos(self, device: torch.device) -> Tensor:
        return torch.full((1, 1), self.cfg.start_speech_token, dtype=torch.long, device=device)
