"""Reduced-precision T3: bfloat16 weights, and gpt-fast-style weight-only int8 for the Linear layers.

A decode step reads every weight of T3 once for one or two rows (the CFG pair), so its cost is the bytes
read: ~2 GB in float32, half in bf16, a quarter for int8 Linears. Apply these after the checkpoint is
loaded: they change dtypes and replace modules, so the official state-dict no longer loads into the
result (`load_weights` would cast float weights into the int8 buffers).

  to_bf16_(t3)        bf16 weights, activations and KV cache; RMSNorm statistics, RoPE angles and the
                      logits stay float32 (the speech head becomes a `Float32Linear`).
  quantize_int8_(m)   every nn.Linear under `m` -> `Int8Linear` (int8 weights, one scale per output row).
  conv1d_to_linear_(m)  GPT-2's Conv1D layers -> nn.Linear (the layout the bf16 and int8 kernels read fast).
  reduce_precision_(t3, "fp32" | "bf16" | "int8")   the presets: int8 = int8 backbone Linears + to_bf16_.
  upcast_rows=N       on CPUs that emulate bf16: bf16 Linears multiply inputs of more than N rows in float32
                      (`Bf16Linear`); int8 ones the packed kernel up to N rows, float32 past them.
  pack_fp16_(t3)      on x86 CPUs without AMX: the bf16 weights on FBGEMM's fp16 GEMM (`PackedFp16Linear`),
                      the rest of T3 and the activations float32 (reduce_precision_(..., packed_fp16=True));
                      with native bf16, prefills' rows on oneDNN's bf16 GEMM (bf16_past_rows).

benchmarks/t3_precision.py measures speed and quality against float32 for each.
"""

from __future__ import annotations

import itertools
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.gpt2 import Conv1D
from ..models.llama import Llama
from ..models.t3 import T3

PRECISIONS = ("fp32", "bf16", "int8")
# CPU, bf16 activations, ms per pass over the Llama T3's Linears (benchmarks/gemv_floor.py, BENCHMARKS.md 27):
# the packed weight-only kernel is the fastest up to 4 rows (50-62 ms) and slows past them (107 at 8 rows,
# 199 at 16); from 5 rows on the rows are quantized too and multiplied in integers (58 at 8, 82 at 16, 138 at
# 64, where dequantizing takes 152 / 132 / 200 and bf16 95-100); prefill-sized inputs dequantize (as fast
# from ~128 rows, and without rounding the activations).
PACKED_MAX_ROWS = 4
DYNAMIC_MAX_ROWS = 64
FP16_MAX = 65504.0  # the largest finite fp16
FEW_ROWS = 16  # Float32Linear: up to this many rows the weight is the GEMM's left operand on CPU


def quantize_weight(weight: Tensor, scale_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: (out, in) float -> int8 (out, in), scales (out,) in `scale_dtype`.

    The scale is rounded to `scale_dtype` before the weights are divided by it, so that int8 * scale is
    exactly the dequantized weight whatever dtype the scales are kept in.
    """
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).to(scale_dtype)  # (out,)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)  # an all-zero row stays zero
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)  # (out, in)
    return q, scales


def int8_mm_packed(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """CPU kernel reading int8 weights directly: x (M, in), weight (out, in) int8, scales (out,) -> (M, out)."""
    return torch.ops.aten._weight_int8pack_mm(x, weight, scales)


def int8_mm_dynamic(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """Rows quantized too (W8A8, per row): x (M, in) -> (M, out) in x's dtype.

    Each row gets its own symmetric int8 scale (max |x| / 127), the products are summed exactly in int32
    (`torch._int_mm`: at most 127 * 127 * in < 2^31), then both scales are applied in float32. A row's result
    therefore depends on that row alone, bit for bit, whatever the batch around it. The extra rounding of
    the rows costs about as much again as the weights' own (relative error ~1.2% against ~0.9% for a
    Linear of random weights; the quality figures are in BENCHMARKS.md 27).
    """
    # few ops: each costs its dispatch ~200 times a decode step (one call per Linear)
    row_scales = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True, dtype=torch.float32)  # (M, 1)
    row_scales.clamp_(min=1e-30).div_(127)
    xq = torch.div(x, row_scales).round_().to(torch.int8)  # (M, in) float32 -> int8, |xq| <= 127
    y = torch._int_mm(xq, weight.t())  # (M, out) int32
    return torch.mul(y, row_scales).mul_(scales).to(x.dtype)


def int8_mm_dequant(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """gpt-fast's form (torch.compile fuses it on CUDA): x (..., in) -> (..., out)."""
    return F.linear(x, weight.to(x.dtype)) * scales


class Int8Linear(nn.Module):
    """y = (x @ W_int8^T) * scales (+ bias); the output has the activations' dtype.

    On CPU with bf16 activations: `int8_mm_packed` for up to PACKED_MAX_ROWS rows (a decode step of one
    chunk), `int8_mm_dynamic` for batches up to DYNAMIC_MAX_ROWS; elsewhere (prefill, float32 activations,
    CUDA) `int8_mm_dequant`. With `upcast_rows` (a CPU that emulates bf16, and has no VNNI for the integer
    rows): the packed kernel up to that many rows, where it beats every other kernel there (GPT-2 medium's
    Linears: 50-63 ms at 1-4 rows, 290 at 16, against bf16's 68-195 and 702, BENCHMARKS.md 31), and past it
    the dequantized weights multiplied in float32.
    """

    def __init__(self, weight: Tensor, scales: Tensor, bias: Tensor | None = None, upcast_rows: int | None = None):
        super().__init__()
        if weight.dtype != torch.int8 or weight.dim() != 2 or scales.shape != weight.shape[:1]:
            raise ValueError(f"Int8Linear wants int8 weights (out, in) and scales (out,), got {weight.dtype} "
                             f"{tuple(weight.shape)} and {tuple(scales.shape)}")
        if bias is not None and bias.shape != scales.shape:
            raise ValueError(f"Int8Linear's bias must have shape {tuple(scales.shape)}, got {tuple(bias.shape)}")
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)  # (out, in) int8
        self.register_buffer("scales", scales)  # (out,) floating point
        self.register_buffer("bias", bias)  # (out,) floating point (GPT-2's layers have one) or None
        self.upcast_rows = upcast_rows

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale_dtype: torch.dtype | None = None) -> Int8Linear:
        """Quantize `linear`; scales (and the bias) in `scale_dtype`, by default the weight's dtype."""
        dtype = scale_dtype or linear.weight.dtype
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        return cls(*quantize_weight(linear.weight, dtype), bias)

    def dequantized(self) -> Tensor:
        """The weights this layer multiplies by, (out, in) float32."""
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., in) -> (..., out)
        scales = self.scales.to(x.dtype)
        rows = x.numel() // self.in_features
        flat = x.reshape(rows, self.in_features)
        if x.device.type == "cpu" and self.upcast_rows is not None:  # a CPU that emulates bf16
            if x.dtype == torch.bfloat16 and rows <= self.upcast_rows:
                y = int8_mm_packed(flat, self.weight, scales)
            else:
                y = F.linear(flat.float(), self.dequantized()).to(x.dtype)
            y = y.view(*x.shape[:-1], self.out_features)
        elif x.device.type == "cpu" and x.dtype == torch.bfloat16 and rows <= DYNAMIC_MAX_ROWS:
            kernel = int8_mm_packed if rows <= PACKED_MAX_ROWS else int8_mm_dynamic
            y = kernel(flat, self.weight, scales).view(*x.shape[:-1], self.out_features)
        else:
            y = int8_mm_dequant(x, self.weight, scales)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scales={self.scales.dtype}"


class Bf16Linear(nn.Linear):
    """A bf16 Linear for CPUs that emulate bf16 arithmetic (AVX2): an input of more than `upcast_rows` rows (a
    prefill) is multiplied in float32 by the weights cast up, which is exact, as a native bf16 GEMM's products
    are (only the sums run in another order), and 2-6x faster there than the emulated GEMM; fewer rows (decode
    steps, bound by reading the weights) stay bf16, half float32's bytes. GPT-2 medium's Linears on a 2-core
    AVX2 EPYC, ms per pass (BENCHMARKS.md 31): 64 rows bf16 2460 / this 957, 400 rows 17103 / 4791; the two
    cross at ~16 rows."""

    upcast_rows: int  # set by from_linear

    @classmethod
    def from_linear(cls, linear: nn.Linear, upcast_rows: int) -> Bf16Linear:
        out = torch.nn.utils.skip_init(cls, linear.in_features, linear.out_features, bias=linear.bias is not None,
                                       device=linear.weight.device, dtype=linear.weight.dtype)
        out.weight, out.bias, out.upcast_rows = linear.weight, linear.bias, upcast_rows
        return out

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() // self.in_features <= self.upcast_rows:
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, upcast_rows={self.upcast_rows}"


# torch.compile cannot trace a call that takes FBGEMM's packed weights (a TorchScript object), so a compiled
# step multiplies through this opaque op instead, which finds its layer by a handle: an int, which the graph
# holds as a constant. Eager forwards call FBGEMM directly (the custom op adds ~22 us a call, BENCHMARKS.md 38).
_PACKED_LAYERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # handle -> PackedFp16Linear
_handles = itertools.count()


@torch.library.custom_op("faster_chatterbox::packed_fp16_linear", mutates_args=())
def packed_fp16_linear(x: Tensor, handle: int, out_features: int) -> Tensor:
    """x: (..., in) float32 -> (..., out_features) float32, by the weights of the layer registered as handle."""
    return torch.ops.quantized.linear_dynamic_fp16(x, _PACKED_LAYERS[handle].packed)


@packed_fp16_linear.register_fake
def _(x: Tensor, handle: int, out_features: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


class PackedFp16Linear(nn.Module):
    """A bf16 Linear for x86 CPUs without AMX: its weights packed for FBGEMM's fp16 GEMM
    (`torch.ops.quantized.linear_dynamic_fp16`, what dynamic fp16 quantization runs), which multiplies float32
    rows by fp16 weights with float32 sums. The weights are the bf16 ones unchanged: a bf16 number's 8
    significant bits fit fp16's 11 for magnitudes from 2^-17 to 65504 (smaller ones move by less than 2^-25;
    `fits` refuses larger ones), so this is the bf16 layer with its rows and sums kept in float32 instead of
    rounded to bf16. The same bytes as bf16, and on a 2-core AVX2 EPYC 2.5-4.6x faster than the emulated bf16
    GEMM from 4 rows up, and faster than the float32 one at every row count to a prefill's 400
    (BENCHMARKS.md 32); on a Zen 4 with native bf16 1.4-2.8x faster than oneDNN's bf16 GEMM at 1-8 rows
    (35). Returns the input's dtype (float32 in `pack_fp16_`'s T3). The packed weights are a
    TorchScript object, not a buffer: they stay on the CPU and out of the state dict (and pickle).

    bf16_past_rows (CPUs with native bf16 but no AMX): inputs of more rows than this (prefills) multiply on
    oneDNN's bf16 GEMM instead, by a bf16 copy of the weights (twice the weight memory): there it is faster
    than FBGEMM at a prefill's hundreds of rows and slower at a decode step's few (BENCHMARKS.md 35).

    Under torch.compile it multiplies through `packed_fp16_linear`, so a compiled step traces whole."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, bf16_past_rows: int | None = None):
        super().__init__()
        if not self.fits(weight):
            raise ValueError(f"PackedFp16Linear wants 2-d weights within fp16's range (|w| <= {FP16_MAX}), got "
                             f"{tuple(weight.shape)} with max |w| {weight.detach().abs().max().item():g}")
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float(),
                                                              None if bias is None else bias.detach().float())
        self.bf16_past_rows = bf16_past_rows
        if bf16_past_rows is not None:  # not persistent: the state dict stays empty, as without them
            self.register_buffer("weight", weight.detach().to(torch.bfloat16), persistent=False)
            self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16),
                                 persistent=False)
        self._register()

    def _register(self) -> None:
        self.handle = next(_handles)
        _PACKED_LAYERS[self.handle] = self

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._register()  # a copy (deepcopy, pickle) answers to a handle of its own

    @staticmethod
    def fits(weight: Tensor) -> bool:
        return weight.dim() == 2 and bool(weight.detach().abs().max() <= FP16_MAX)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedFp16Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., in) -> (..., out)
        if self.bf16_past_rows is not None and x.numel() // self.in_features > self.bf16_past_rows:
            return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)
        if torch.compiler.is_compiling():
            return packed_fp16_linear(x.float(), self.handle, self.out_features).to(x.dtype)
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed).to(x.dtype)

    def extra_repr(self) -> str:
        past = "" if self.bf16_past_rows is None else f", bf16 past {self.bf16_past_rows} rows"
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 packed for FBGEMM{past}"


class Float32Linear(nn.Linear):
    """A Linear that stays float32 inside a bf16 model: casts its input up and returns float32."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Float32Linear:
        out = torch.nn.utils.skip_init(cls, linear.in_features, linear.out_features, bias=linear.bias is not None,
                                       device=linear.weight.device)
        out.weight = nn.Parameter(linear.weight.detach().float(), requires_grad=False)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        return out

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., in) -> (..., out) float32
        x = x.float()
        rows = x.numel() // self.in_features
        if x.device.type != "cpu" or rows > FEW_ROWS:
            return F.linear(x, self.weight, self.bias)
        # A decode step's few rows: MKL multiplies (rows, in) by the transposed weight at ~2 GB/s on an AVX2
        # EPYC past one row, and the same product with the operands swapped, weight (out, in) @ rows^T, faster
        # (the speech head, 6563 x 1024: 3.5 / 12.2 / 12.7 ms against 3.1 / 3.7 / 5.0 at 1 / 4 / 8 rows,
        # BENCHMARKS.md 32).
        flat = x.reshape(rows, self.in_features)
        y = (torch.mm(self.weight, flat.t()) if self.bias is None
             else torch.addmm(self.bias[:, None], self.weight, flat.t()))  # (out, rows)
        return y.t().contiguous().view(*x.shape[:-1], self.out_features)


def conv1d_to_linear_(module: nn.Module) -> list[str]:
    """Replace every GPT-2 Conv1D under `module` (weight (in, out), addmm) by the nn.Linear it equals (weight
    (out, in)), in place; returns the replaced names. oneDNN reads a bf16 Linear's weight at ~13 GB/s on
    this CPU and the transposed Conv1D layout at ~5 (BENCHMARKS.md 21), and the int8 kernels take Linears.
    The sums run in another order, so the exact preset (float32) keeps Conv1D as Hugging Face's."""
    targets = [(name, child) for name, child in module.named_modules() if isinstance(child, Conv1D)]
    for name, conv in targets:
        n_in, n_out = conv.weight.shape
        linear = torch.nn.utils.skip_init(nn.Linear, n_in, n_out, device=conv.weight.device, dtype=conv.weight.dtype)
        linear.weight = nn.Parameter(conv.weight.detach().t().contiguous(), requires_grad=False)
        linear.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name), attr, linear)
    return [name for name, _ in targets]


def quantize_int8_(module: nn.Module, *, skip: tuple[str, ...] = (),
                   scale_dtype: torch.dtype | None = None) -> list[str]:
    """Replace every nn.Linear under `module` by an Int8Linear, in place; returns the replaced names.

    skip: names (relative to `module`) of Linears, or of modules whose Linears, to leave alone.
    scale_dtype: the dtype of the scales, by default each weight's own; pass the activation dtype the
    model will run in (bf16) when quantizing float32 weights before `to_bf16_`.
    """
    targets = [(name, child) for name, child in module.named_modules()
               if name and type(child) is nn.Linear and not any(name == s or name.startswith(s + ".") for s in skip)]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name), attr, Int8Linear.from_linear(linear, scale_dtype))
    return [name for name, _ in targets]


def to_bf16_(t3: T3, *, fp32_logits: bool = True) -> T3:
    """Cast T3 to bfloat16 in place (int8 weights stay int8).

    Float32 stays where it matters: RMSNorm normalizes in float32 and the RoPE angles are float32 tables
    (models/llama.py; cos/sin are rounded to bf16 on use, as Hugging Face does); with `fp32_logits` the
    speech head keeps float32 weights and output (its weights are <2% of T3's bytes). KV caches made
    afterwards (`Llama.new_cache`) follow the weights' dtype unless `t3.tfmr.kv_dtype` is set.
    """
    head = t3.speech_head
    keep_head = fp32_logits and isinstance(head, nn.Linear)
    for name, child in t3.named_children():
        if not (keep_head and name == "speech_head"):
            child.to(torch.bfloat16)
    if keep_head:
        t3.speech_head = Float32Linear.from_linear(head)
    return t3


def pack_fp16_(t3: T3, bf16_past_rows: int | None = None) -> T3:
    """bf16 weights in a float32 T3, in place, for x86 CPUs without AMX: every Linear's weights (and
    bias) rounded to bf16, as `to_bf16_` rounds them, and packed for FBGEMM's fp16 GEMM (`PackedFp16Linear`; a
    layer with a weight past fp16's range keeps its rounded weights in float32); the speech head a
    `Float32Linear`; embeddings, norms and the activations float32. The Linears multiply by the bf16 preset's
    weights, the rest is nearer float32 than `to_bf16_`'s model (logits 4.4x nearer), and a 4-row Turbo step
    is 1.19x faster than with bf16 activations there, whose elementwise ops are emulated too (BENCHMARKS.md
    32). bf16_past_rows: each packed layer's (`PackedFp16Linear`), for CPUs with native bf16."""
    for name, child in list(t3.named_modules()):
        if type(child) is not nn.Linear:
            continue
        with torch.no_grad():
            weight = child.weight.to(torch.bfloat16).float()
            bias = None if child.bias is None else child.bias.to(torch.bfloat16).float()
        if name == "speech_head":
            replacement = Float32Linear.from_linear(child)  # float32 weights, as to_bf16_ keeps them
        elif PackedFp16Linear.fits(weight):
            replacement = PackedFp16Linear(weight, bias, bf16_past_rows)
        else:  # past fp16's range: the rounded weights, multiplied in float32
            with torch.no_grad():
                child.weight.copy_(weight)
                if bias is not None:
                    child.bias.copy_(bias)
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(t3.get_submodule(parent_name), attr, replacement)
    return t3


def reduce_precision_(t3: T3, precision: str, upcast_rows: int | None = None, packed_fp16: bool = False,
                      packed_bf16_past_rows: int | None = None, fuse: bool = True) -> T3:
    """One of PRECISIONS, in place, on a loaded float32 T3.

    fp32: unchanged. bf16: `to_bf16_`. int8: the backbone's Linears (qkv/o, gate_up/down; GPT-2's q/k/v,
    projections and MLP) to int8 with bf16 scales, then `to_bf16_` (bf16 activations, float32 logits).
    A GPT-2 backbone's Conv1D layers become Linears first (`conv1d_to_linear_`); a Llama backbone's q/k/v
    and gate/up projections are fused first (`Llama.fuse_projections`; `fuse=False` keeps them apart, for
    side-by-side measurements). Fusing changes no weight: int8's scales are per output row, bf16 rounds
    each weight alone.
    upcast_rows (CPUs that emulate bf16): every bf16 nn.Linear becomes a `Bf16Linear` with that threshold,
    and the Int8Linears take it (packed kernel up to it, float32 past it).
    packed_fp16 (x86 CPUs without AMX): bf16 by `pack_fp16_` instead of `to_bf16_`, its layers on oneDNN's bf16
    GEMM past `packed_bf16_past_rows` rows (CPUs with native bf16); fp32 and int8 weights have nothing to pack,
    and ignore it as fp32 ignores upcast_rows.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    dtype = t3.speech_emb.weight.dtype
    if dtype != torch.float32 or type(t3.speech_head) is not nn.Linear:
        raise ValueError(f"reduce_precision_ wants a float32 T3 as loaded, not one already converted "
                         f"({dtype} weights, speech head {type(t3.speech_head).__name__})")
    if precision != "fp32":
        conv1d_to_linear_(t3.tfmr)
        if fuse and isinstance(t3.tfmr, Llama):
            t3.tfmr.fuse_projections()
    if packed_fp16 and precision == "bf16":
        return pack_fp16_(t3, packed_bf16_past_rows)
    if precision == "int8":
        quantize_int8_(t3.tfmr, scale_dtype=torch.bfloat16)
    if precision != "fp32":
        to_bf16_(t3)
    if precision != "fp32" and upcast_rows is not None:
        for name, child in list(t3.named_modules()):
            if isinstance(child, Int8Linear):
                child.upcast_rows = upcast_rows
            elif type(child) is nn.Linear:
                parent_name, _, attr = name.rpartition(".")
                setattr(t3.get_submodule(parent_name), attr, Bf16Linear.from_linear(child, upcast_rows))
    return t3
