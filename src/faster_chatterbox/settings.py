"""Settings, resolved once: what a loaded model runs with and what one call runs with.

  EngineSettings   load time: weight and cache dtypes, the voice's tokenizer passes, device policy (batch
                   sizes, render slots, decoding ahead). `engine_settings(preset, device)`.
  CallSettings     one call: sampling, the flow solve, text handling, checks and retries, random streams
                   and the seed used, streaming, output. `call_settings(engine, ...)` from the call's
                   arguments.
Both are frozen, built only here, passed down and returned with the result (`SynthesisResult.settings`):
passing a result's settings back to `synthesize` reproduces its audio. Nothing else reads a preset name.

The presets, measured on this project's 2-core AVX512-BF16 CPU (BENCHMARKS.md):
  exact    upstream step for step: float32, one chunk after another on the global RNG, Euler on the cosine
           grid for 10 CFM steps, the S3 tokenizer run twice per voice, no text normalisation. The oracle
           the parity suite checks, and the fallback.
  fast     (the default) every speed-up whose measured loss is negligible: T3 in bf16 (KL to float32 4.6e-4
           per step, section 4) with a float32 KV cache on CPU; continuous batching with per-chunk random
           streams, a text's sentences spread over the batch's rows (`chunk_rows`: chunks of about
           len / rows characters, whole sentences; its T3 time is its longest sentence's, section 21); the
           CFM solved with Adams-Bashforth 2 on a sway grid in 8 estimator calls (no larger error than
           upstream's 10 Euler steps in every setting of section 3); the flow decoder in bf16 (mel 5.6e-4
           relative) and HiFT's convolutions in bf16 (43 dB SNR); a window's consecutive chunks rendered as
           one S3Gen sequence, the decoder prompt once, as upstream renders a whole text of up to 40 s in one
           call (`joint_render`: S3Gen 1.36-1.46x, section 30); English number/abbreviation normalisation.
  fastest  also the lossy ones, their cost stated: T3 weights in int8 (CPU; KL 1.6e-3, top-1 85% on random
           weights; steps of 5 to 64 rows, where the weight-only kernel slows down, round the rows to int8
           too, each row by its own scale: KL 3.2e-3, section 27), 6 CFM estimator calls (0.9-1.5x the error of upstream's 10), the decoder prompt cut to the
           voice's first 5 s (target mel moves 3.5e-3 relative; CFM ~1.9x faster), the S3 tokenizer run once
           per voice (6.5% of T3's prompt tokens change on random weights, benchmarks/voice_tokenize_once.py).
Chatterbox-Flash (block-diffusion T3, `flash_engine_settings`, `flash_call_settings`): exact is the reference
package's decoding step for step (10 steps per block, its defaults, T3 in float32); fast and fastest take
fewer denoising steps per block (FLASH_PRESETS, BENCHMARKS.md); the rest as above.
Turbo and Nano (model="turbo" | "nano") resolve the same rows onto their own model: the meanflow decoder
with its 2 steps (no solver settings), Turbo's processor order with top_k. exact = upstream's `inference_turbo`
loop in float32 (Hugging Face's Conv1D layers); fast = T3 in bf16 (its Conv1D layers as Linears) with
continuous batching; fastest = int8 weights on CPU.
On CPUs that emulate bf16 (AVX2 without AVX512-BF16 or AMX: `devices.native_bf16`) fast and fastest keep S3Gen
in float32 (BENCHMARKS.md 31). On x86 ones (FBGEMM: `devices.fbgemm_fp16`) T3's bf16 weights are packed for
FBGEMM's fp16 GEMM, which multiplies them exactly, in float32, 2.5-4.6x faster than emulated bf16 from 4 rows
up and as fast as packed int8, so fastest's T3 is bf16 there too (BENCHMARKS.md 32); on others (ARM) decode
steps keep the bf16 or packed int8 weights and prefills (more than 16 rows) multiply in float32. x86 CPUs
with native bf16 but no AMX (`devices.amx_tiles`; AMD Zen 4) pack fast's T3 the same way for its decode
steps (~1.8x faster than on oneDNN's bf16 GEMM) and hand inputs of more than 16 rows (prefills) to oneDNN,
keep fastest's int8, and leave Flash's block-decoding T3 on oneDNN (BENCHMARKS.md 35).
On CUDA the reduced presets keep T3 in bf16 (weight-only int8 does not pay without fused kernels) and batch
more: 32 requests per T3 batch, two S3Gen renders at a time, 8 chunks per render, T3 decoded a window ahead.
"""

from __future__ import annotations

import math
import numbers
import operator
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .checks import CheckLimits
from .devices import amx_tiles, fbgemm_fp16, native_bf16
from .engine.block_diffusion import FlashParams, params_problem
from .engine.sampling import LLAMA_ORDER, SAMPLING_RANGES, TOP_K_MAX, TURBO_ORDER, SamplingParams, check_range
from .text.multilingual import check_language

PRESET_NAMES = ("exact", "fast", "fastest")
TURBO_MODELS = ("turbo", "nano")  # the GPT-2 T3s (tts_turbo.ChatterboxTurboTTS)
MODEL_NAMES = ("chatterbox", *TURBO_MODELS, "multilingual", "flash")  # the family (EngineSettings.model)
DEFAULT_PRESET = "fast"
MAX_RETRIES = 10  # a chunk's regenerations at most: each costs a whole chunk
MAX_CHARS = 300  # longest chunk of text one T3 call speaks
# a CPU batch reads a voice's prefix once (SharedPrefix) where copies under its rows would take this many
# slots: 4 Turbo rows (1,500) step 1.18x faster, 2 rows (750) 1.01x (BENCHMARKS.md section 33)
SHARED_PREFIX_SLOTS_CPU = 1024
# where FBGEMM's fp16 GEMM takes T3's steps on a CPU with native bf16, rows past this go to oneDNN's bf16 GEMM:
# over the English T3's Linears on a quiet Zen 4 FBGEMM was 1.5x faster at 16 rows, oneDNN 1.06x at 32
# (BENCHMARKS.md 35)
PACKED_BF16_PAST_ROWS = 16


@dataclass(frozen=True)
class EngineSettings:
    preset: str
    device: str
    t3_precision: str  # engine.quantize.PRECISIONS
    kv_dtype: torch.dtype | None  # the T3 KV cache and attention dtype; None: the weights'
    s3gen_dtype: torch.dtype  # flow decoder and vocoder weights/activations
    tokenize_voice_once: bool  # T3's prompt tokens from the decoder's S3 tokenizer pass
    max_batch: int  # T3 requests per continuous batch, across calls
    urgent_rows: int  # requests beyond max_batch that only calls' first chunks may take (short calls never wait)
    render_slots: int  # S3Gen renders at once, across calls
    # rows per S3Gen batch, chunks of any calls waiting together (engine.render_slots.RenderQueue); 1 on CPU,
    # where batching does not pay (0.94x: BENCHMARKS.md section 7, benchmarks/s3gen_speed.md)
    render_batch: int
    decode_ahead: bool  # submit the next window's T3 while this window renders
    # T3's batch waits while a streamed call's first piece renders (engine.scheduler.T3Scheduler.held), which
    # then has the CPU's cores to itself: with the CFM decoder (8 steps over the 10 s prompt) the first audio
    # 1.4-1.5x sooner, the next pieces 1.5-3.1 s later; the meanflow decoder's first audio came 1.0-1.5 s
    # sooner but its second piece 1.5-2.1 s later, a longer gap after a 1 s first piece, so it renders beside
    # T3 (BENCHMARKS.md 36)
    hold_t3_for_first_piece: bool = False
    decoder: str = "cfm"  # S3Gen's: "cfm" (the model's own) or "meanflow" (Turbo's, distilled for its own solve)
    # silence tokens after each chunk's speech tokens, as Turbo feeds its meanflow decoder (Flash feeds none)
    trailing_silence: int = 0
    model: str = "chatterbox"  # one of MODEL_NAMES
    sampling_order: tuple[str, ...] = LLAMA_ORDER  # the T3 logits processors' order (engine.sampling)
    alignment_guard: bool = False  # T3's stop token steered by its text alignment (Multilingual v2, as upstream 0.1.7)
    # each chunk's audio ends before its last speech token's (Multilingual v3, as upstream HEAD: emitted just
    # before the stop with degraded attention, that token decodes to ~40 ms of noise)
    drop_final_token: bool = False
    block_size: int | None = None  # Chatterbox-Flash: T3 decodes blocks of this many tokens; None: autoregressive
    # the scheduler's batches draw with "multinomial" (a generator per row, upstream's draws) or "keyed"
    # (engine.sampling.keyed_sample_rows: counter-based noise, one launch per step, batch-independent)
    t3_sampler: str = "multinomial"
    # how the scheduler's batches decode (engine.static_batch.STEPS): "dynamic" (DecodeBatch, a resized cache),
    # "static" (a static cache, eager step), "inductor" (the step compiled), "cuda_graph" (captured)
    t3_step: str = "dynamic"
    # CPUs that emulate bf16 (engine.quantize.Bf16Linear): T3's bf16 Linears multiply inputs of more rows than
    # this (prefills) in float32, and int8 ones their dequantized weights; None: always bf16. Unused where
    # t3_packed_fp16 (its kernel serves prefills too)
    t3_upcast_rows: int | None = None
    # x86 CPUs without AMX: T3's bf16 weights on FBGEMM's fp16 GEMM, its activations float32
    # (engine.quantize.pack_fp16_)
    t3_packed_fp16: bool = False
    # with t3_packed_fp16 on CPUs with native bf16: inputs of more rows than this (prefills, Flash's blocks)
    # multiply on oneDNN's bf16 GEMM by a second, bf16 copy of the weights (engine.quantize.PackedFp16Linear);
    # None: every row count packed
    t3_packed_bf16_past_rows: int | None = None
    # the dynamic batches attend to the voices' prefixes in place instead of copying them under every row, when
    # a fresh batch's copies of one voice would take this many slots (engine.batch_decode.BatchDecoder);
    # None: always copied
    t3_shared_prefix_slots: int | None = None


@dataclass(frozen=True)
class SolveSettings:
    """The flow decoder's solve. n_timesteps None: the decoder's own (10 CFM steps, 2 meanflow)."""

    n_timesteps: int | None = None
    solver: str | None = None  # None: upstream's Euler (models.flow_solvers)
    schedule: str | None = None  # None: upstream's cosine grid
    sway_coef: float | None = None
    f0_smoothing: bool = False  # optimize_quality: smooth the vocoder's F0 (against robotic pitch jitter)
    prompt_seconds: float | None = None  # decoder prompt cut to the voice's first N s (None: upstream's 10 s)
    # consecutive chunks of a window rendered as one sequence (silence tokens between, the decoder prompt once),
    # each chunk's audio cut out of it; False: each chunk its own render, with the prompt, as upstream's calls
    joint_render: bool = False


@dataclass(frozen=True)
class TokenStreaming:
    """Token-level streaming of a chunk: audio every few tokens instead of once per chunk (CosyVoice-style).

    Each piece re-renders its new tokens with up to `context` earlier tokens (and the decoder prompt) in
    front and `lookahead` tokens after them (the flow encoder looks 3 tokens ahead), and overlaps the
    previous piece by `overlap_ms`, crossfaded. Pieces end at fixed token counts: `first_tokens`, then
    pieces of `piece_tokens` growing by `growth` up to `max_piece_tokens` (the chunk's rest last), so a
    call's audio does not depend on when its tokens came, and a long chunk needs few renders.
    """

    first_tokens: int = 25  # 1 s of speech before the first audio
    piece_tokens: int = 50  # the second piece
    growth: int = 2  # each later piece this many times the one before
    max_piece_tokens: int = 400
    context: int = 50
    lookahead: int = 3
    overlap_ms: float = 20.0


@dataclass(frozen=True)
class CallSettings:
    preset: str  # the preset the defaults came from (a record; nothing branches on it)
    sampling: SamplingParams
    max_new_tokens: int  # each chunk's token cap
    solve: SolveSettings
    normalize_text: bool  # English numbers, dates, abbreviations before tokenising
    max_chars: int  # chunk length
    chunk_short_text: bool  # False: a text of at most max_chars is one untouched chunk, as upstream
    continuous_batching: bool  # T3 through the engine's scheduler (needs seeded_streams); False: one by one
    seeded_streams: bool  # each chunk attempt's own random streams from `seed`; False: the global RNG
    seed: int | None  # the seed used (drawn when the call gave none, seeded streams only)
    rng_state: torch.Tensor | None  # global RNG: its state at the start of the call (None: the call seeded it)
    max_retries: int  # regenerations of a chunk that fails its checks
    budget_factor: float | None  # chunk token budget = factor x its expected tokens (capped); None: the cap
    limits: CheckLimits
    token_streaming: TokenStreaming | None  # generate_stream's first chunk streamed by tokens (None: by chunk)
    first_chunk_chars: int  # generate_stream: the first chunk, decoded alone, is at most this long
    watermark: bool
    optimize_quality: bool
    language: str | None = None  # Multilingual's language id (text front-end, tag, sentences); None: the English model
    flash: FlashParams | None = None  # Chatterbox-Flash's block-diffusion decoding (None: autoregressive T3)
    # a text's whole sentences spread over about this many chunks, so that they decode as one batch (a batch
    # step costs about what one row's does, BENCHMARKS.md 21); None: greedy chunks of max_chars
    chunk_rows: int | None = None


@dataclass(frozen=True)
class _Preset:
    """One row of the preset table: load-time values, then call defaults."""

    t3_precision: str = "fp32"
    s3gen_dtype: torch.dtype = torch.float32
    tokenize_voice_once: bool = False
    solve: SolveSettings = field(default_factory=SolveSettings)
    normalize_text: bool = False
    chunk_short_text: bool = False
    continuous_batching: bool = False
    seeded_streams: bool = False
    max_retries: int = 0
    budget_factor: float | None = None
    token_streaming: TokenStreaming | None = None
    fill_batch: bool = False  # chunk_rows = the engine's batch size


_EXACT = _Preset()
_FAST = _Preset("bf16", torch.bfloat16, solve=SolveSettings(8, "ab2", "sway", -0.6, joint_render=True), normalize_text=True,
                chunk_short_text=True, continuous_batching=True, seeded_streams=True, max_retries=2,
                budget_factor=2.5, token_streaming=TokenStreaming(), fill_batch=True)
_FASTEST = replace(_FAST, t3_precision="int8", tokenize_voice_once=True,
                   solve=SolveSettings(6, "ab2", "sway", -0.6, prompt_seconds=5.0, joint_render=True))
_PRESETS = {"exact": _EXACT, "fast": _FAST, "fastest": _FASTEST}


def _preset(name: str) -> _Preset:
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESET_NAMES)}")
    return _PRESETS[name]


# Chatterbox-Flash's decoding per preset: exact the reference's defaults; fewer steps per block in the others
# (T3 work per token ~ (steps + 1) / block size forwards: BENCHMARKS.md section 18)
FLASH_PRESETS = {"exact": FlashParams(), "fast": FlashParams(num_steps=5), "fastest": FlashParams(num_steps=3)}


def engine_settings(preset: str, device: torch.device | str, decoder: str = "cfm",
                    model: str = "chatterbox", alignment_guard: bool = False,
                    drop_final_token: bool = False) -> EngineSettings:
    """The load-time settings of `preset` on `device` (a resolved torch device) with S3Gen's `decoder`, for
    `model` ("chatterbox", "multilingual", or "turbo" / "nano": meanflow decoder and Turbo's sampling whatever
    `decoder`); alignment_guard: the model's T3 decodes with it (Multilingual v2); drop_final_token: each
    chunk's last speech token is not voiced (Multilingual v3)."""
    row, device = _preset(preset), torch.device(device)
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}: choose one of {', '.join(MODEL_NAMES)}")
    turbo = model in TURBO_MODELS
    cuda, emulated = device.type == "cuda", not native_bf16(device)
    # FBGEMM's fp16 GEMM multiplies T3's bf16 weights (rows and sums in float32) faster than oneDNN's bf16 GEMM
    # at a decode step's rows on x86 CPUs without AMX: where bf16 is emulated as fast as the packed int8 kernel
    # at 1-4 rows and faster from 8 (BENCHMARKS.md 32), so int8 would lose quality for nothing there; with
    # native bf16 (Zen 4) the CFG pair's step 1.8x faster, int8 faster still (35). AMX keeps oneDNN, and so does
    # Flash's T3 with native bf16: its forwards are blocks (32 rows a chunk), its T3 0.89x as fast packed (35)
    packed_fp16 = fbgemm_fp16(device) and not amx_tiles(device) and (emulated or model != "flash")
    precision = "bf16" if (cuda or packed_fp16 and emulated) and row.t3_precision == "int8" else row.t3_precision
    packed_t3 = packed_fp16 and precision == "bf16"
    # bf16 attention is slow on CPU: a float32 KV cache makes a decode step 8-25% faster (BENCHMARKS.md 4)
    kv_dtype = torch.float32 if precision != "fp32" and device.type == "cpu" else None
    # an emulated bf16 S3Gen is 5-7x slower than float32 (BENCHMARKS.md 31): it stays float32 there
    s3gen_dtype = torch.float32 if emulated else row.s3gen_dtype
    decoder = "meanflow" if turbo else decoder
    return EngineSettings(preset, str(device), precision, kv_dtype, s3gen_dtype, row.tokenize_voice_once,
                          max_batch=32 if cuda else 8, urgent_rows=8 if cuda else 1, render_slots=2 if cuda else 1,
                          render_batch=8 if cuda else 1, decode_ahead=cuda,
                          hold_t3_for_first_piece=not cuda and decoder == "cfm", decoder=decoder,
                          trailing_silence=3 if decoder == "meanflow" and model != "flash" else 0,
                          model=model, sampling_order=TURBO_ORDER if turbo else LLAMA_ORDER,
                          alignment_guard=alignment_guard, drop_final_token=drop_final_token,
                          # The keyed draws pay where the step is captured or compiled (one launch per step); on
                          # the eager step they cost more than per-row multinomials (4.8 against 2.1 ms a step at
                          # one row, BENCHMARKS.md 20). On CPU neither the static cache's eager step nor its
                          # inductor-compiled one (with or without freezing and autotuning) measured faster
                          # (0.88-0.98x, BENCHMARKS.md 29); on the packed fp16 T3 the compiled step with freezing
                          # and autotuning is 1.16-1.17x faster (38), but compiles for 100-160 s a graph, several
                          # graphs per batch's life. The captured step awaits gpu-check's t3_static.
                          t3_sampler="multinomial", t3_step="dynamic",
                          # a decode step's few rows are bound by reading the weights: bf16 (half the bytes) and
                          # the packed int8 kernel are faster even emulated, up to ~16 rows; a prefill is bound
                          # by the arithmetic, which float32 does at full speed (BENCHMARKS.md 31)
                          t3_upcast_rows=16 if emulated and precision != "fp32" else None,
                          # emulated, FBGEMM's fp16 GEMM multiplies the same weights 2.5-4.6x faster from 4
                          # rows up, and 1.5x faster than float32 at a prefill's 400 rows
                          t3_packed_fp16=packed_t3,
                          # with native bf16 (Zen 4) FBGEMM is 1.2-1.8x faster at a step's 2-8 rows, oneDNN's
                          # bf16 GEMM 1.15-2.1x at a prefill's 400 rows and a Flash block's 32 (BENCHMARKS.md 35)
                          t3_packed_bf16_past_rows=PACKED_BF16_PAST_ROWS if packed_t3 and not emulated else None,
                          t3_shared_prefix_slots=SHARED_PREFIX_SLOTS_CPU if device.type == "cpu" else None)


def call_settings(engine: EngineSettings, *, fast_inference: bool = True, temperature=0.8, cfg_weight=0.5,
                  repetition_penalty=1.2, min_p=0.05, top_p=1.0, top_k=0, max_new_tokens=1000,
                  max_speech_tokens: int = 4096,
                  n_timesteps=None, seed=None, max_retries=None, token_budget_factor=-1.0, max_chars=MAX_CHARS,
                  watermark: bool = True, optimize_quality: bool = False, random_weights: bool = False,
                  token_streaming: bool = True, first_chunk_chars=100, language: str | None = None) -> CallSettings:
    """One call's settings from the model's settings and the call's arguments, validated with their names.

    fast_inference=False: upstream's algorithms for this call (the exact preset's call settings) on the
    weights as loaded. max_retries None: the preset's (0 on random-weight checkpoints, whose audio is
    noise); token_budget_factor -1.0: the preset's. top_k (0: off) applies where the model's processor order
    has it (Turbo). Numbers may be any real type (numpy, 0-d tensors).
    language: the multilingual model's language id (SUPPORTED_LANGUAGES); English normalisation applies to
    "en" only.
    """
    row = _preset(engine.preset) if fast_inference else _EXACT
    sampling = SamplingParams(**{name: real(name, value, *SAMPLING_RANGES[name]) for name, value in dict(
        temperature=temperature, cfg_weight=cfg_weight, repetition_penalty=repetition_penalty, min_p=min_p,
        top_p=top_p).items()}, top_k=integer("top_k", top_k, 0, TOP_K_MAX), processors=engine.sampling_order)
    solve = row.solve
    if engine.decoder == "meanflow":  # distilled for its own 2-step solve: only the prompt cut applies
        solve = SolveSettings(prompt_seconds=solve.prompt_seconds, joint_render=solve.joint_render)
    if n_timesteps is not None:
        solve = replace(solve, n_timesteps=integer("n_timesteps", n_timesteps, 1, 1000))
    if optimize_quality:
        solve = replace(solve, f0_smoothing=True)
    if max_retries is None:
        max_retries = 0 if random_weights else row.max_retries
    if isinstance(token_budget_factor, (int, float)) and token_budget_factor == -1.0:
        token_budget_factor = row.budget_factor
    elif token_budget_factor is not None:
        token_budget_factor = real("token_budget_factor", token_budget_factor, 1.0, 100.0)
    seed = None if seed is None else integer("seed", seed, 0)
    rng_state = None
    if row.seeded_streams and seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.long))  # one draw: torch.manual_seed still governs
    elif not row.seeded_streams and seed is None:
        rng_state = torch.get_rng_state()  # the global stream this call will consume
    return CallSettings(
        engine.preset if fast_inference else "exact", sampling,
        integer("max_new_tokens", max_new_tokens, 1, max_speech_tokens), solve, row.normalize_text,
        integer("max_chars", max_chars, 20, 10_000), row.chunk_short_text, row.continuous_batching,
        row.seeded_streams, seed, rng_state, integer("max_retries", max_retries, 0, MAX_RETRIES),
        token_budget_factor, CheckLimits(), row.token_streaming if token_streaming else None,
        first_chunk_chars=integer("first_chunk_chars", first_chunk_chars, 20, 10_000), watermark=bool(watermark), optimize_quality=bool(optimize_quality),
        language=None if language is None else check_language(language),
        chunk_rows=engine.max_batch if row.fill_batch else None)


def flash_engine_settings(preset: str, device: torch.device | str, block_size: int = 16) -> EngineSettings:
    """Chatterbox-Flash's load-time settings: `preset`'s, S3Gen its meanflow decoder, T3 in blocks."""
    block_size = integer("drf_block_size", block_size, 1, 64)
    return replace(engine_settings(preset, device, "meanflow", model="flash"), block_size=block_size)


def flash_call_settings(engine: EngineSettings, *, num_steps=None, temperature=None, time_shift_tau=None,
                        omnivoice_schedule_t_shift=None, cfg_scale=None, position_temperature=None,
                        pmi_uncond_prior_precompute=None, normalize_text=None, **kwargs) -> CallSettings:
    """One Chatterbox-Flash call's settings: its decoding parameters (None: the preset's, FLASH_PRESETS; the
    reference's names) on top of `call_settings(engine, **kwargs)`."""
    call = call_settings(engine, **kwargs)
    given = dict(temperature=temperature, time_shift_tau=time_shift_tau, schedule_shift=omnivoice_schedule_t_shift,
                 cfg_scale=cfg_scale, position_temperature=position_temperature)
    names = dict(schedule_shift="omnivoice_schedule_t_shift")
    values = {k: real(names.get(k, k), v, 0.0, 100.0) for k, v in given.items() if v is not None}
    if num_steps is not None:
        values["num_steps"] = integer("num_steps", num_steps, 1, 64)
    if pmi_uncond_prior_precompute is not None:
        if not isinstance(pmi_uncond_prior_precompute, (bool, np.bool_)):
            raise TypeError(f"pmi_uncond_prior_precompute must be a bool, got {pmi_uncond_prior_precompute!r}")
        values["uncond_prior"] = bool(pmi_uncond_prior_precompute)
    params = replace(FLASH_PRESETS[call.preset], **values)
    problem = params_problem(params)
    if problem:
        raise ValueError(problem)
    text = call.normalize_text if normalize_text is None else bool(normalize_text)
    return replace(call, flash=params, normalize_text=text)


def real(name: str, value, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """`value` as a float when it is a real number (Python, numpy or a one-element tensor) in the range,
    else a ValueError (TypeError for a non-number) naming `name`."""
    if torch.is_tensor(value) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    check_range(name, float(value), low, high, low_open)
    return float(value)


def integer(name: str, value, low: int, high: float = math.inf) -> int:
    """`value` as an int when it is an integer (Python, numpy or a one-element integer tensor) in [low, high],
    else a ValueError (TypeError for a non-integer) naming `name`."""
    if torch.is_tensor(value) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if not low <= value <= high:
        bound = f">= {low}" if high == math.inf else f"in [{low}, {int(high)}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value}")
    return value


def stream_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit torch seed for one random stream, hashed from the call's seed, the stream's purpose and its
    keys (chunk index, attempt): streams of nearby seeds, chunks or attempts never coincide, and seeds of
    any size count in full (numpy's SeedSequence)."""
    words = np.random.SeedSequence(seed, spawn_key=(zlib.crc32(purpose.encode()), *keys))
    return int(words.generate_state(1, np.uint64)[0] >> np.uint64(1))


def torch_seed(seed: int) -> int:
    """The global RNG's seed for `seed` (global-stream calls): the seed itself as upstream's users pass it to
    torch.manual_seed, hashed to 64 bits when it is larger than torch takes."""
    return seed if seed < 2**64 else int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])
