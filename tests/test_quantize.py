"""Reduced-precision T3 (engine/quantize.py): int8 Linear arithmetic, what gets replaced, and the quality
cost of bf16 / int8 against float32 on teacher-forced steps of a small T3 with random weights."""

from __future__ import annotations

import copy
import gc
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_error
from torch import nn

from faster_chatterbox.engine.quantize import (
    DYNAMIC_MAX_ROWS,
    PACKED_MAX_ROWS,
    Bf16Linear,
    Float32Linear,
    Int8Linear,
    PackedFp16Linear,
    int8_mm_dynamic,
    quantize_int8_,
    quantize_weight,
    reduce_precision_,
    to_bf16_,
)
from faster_chatterbox.devices import fbgemm_fp16
from faster_chatterbox.engine.sampling import (
    SamplingParams,
    cfg_combine,
    next_token_probs,
)
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.models.llama import LlamaConfig
from faster_chatterbox.models.t3 import T3, T3Cond, T3Config
from faster_chatterbox.random_checkpoint import _randomize_

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = T3Config(llama=LlamaConfig(dim=256, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=64, ffn_dim=512))
BACKBONE_LINEARS = {f"layers.{i}.{name}" for i in range(3) for name in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
# what reduce_precision_ leaves of them: q/k/v and gate/up fused (Llama.fuse_projections)
FUSED_BACKBONE_LINEARS = {f"layers.{i}.{name}" for i in range(3) for name in (
    "self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}
STEPS = 60


@pytest.fixture(scope="module")
def t3_fp32() -> T3:
    t3 = T3(SMALL).eval()
    _randomize_(t3, torch.Generator().manual_seed(0))
    return t3


@pytest.fixture(scope="module")
def inputs() -> tuple[T3Cond, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    cond = T3Cond(speaker_emb=torch.randn(1, 256, generator=g),
                  cond_prompt_speech_tokens=torch.randint(0, 6561, (1, 150), generator=g),
                  emotion_adv=0.5 * torch.ones(1, 1, 1))
    text = torch.randint(7, 100, (40,), generator=g)
    text[0], text[-1] = SMALL.start_text_token, SMALL.stop_text_token
    return cond, text


# ---- Int8Linear ---------------------------------------------------------------------------------------------

def test_quantize_weight_rounds_to_nearest_step():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 64)[:, None]
    w[5] = 0  # an all-zero row
    for scale_dtype in (torch.float32, torch.bfloat16):
        q, scales = quantize_weight(w, scale_dtype)
        assert q.dtype == torch.int8 and scales.dtype == scale_dtype and q.abs().max() <= 127
        deq = q.float() * scales.float()[:, None]
        # every weight within half a quantization step of its row's scale
        assert bool(((deq - w).abs() <= 0.5 * scales.float()[:, None] * (1 + 1e-3)).all())
        assert bool((q[5] == 0).all())
        # the scale is max|w| / 127 up to its dtype's rounding (the zero row has scale 1)
        rows = torch.arange(64) != 5
        assert rel_error(scales.float()[rows], w.abs().amax(1)[rows] / 127) < (
            1e-6 if scale_dtype == torch.float32 else 4e-3)


# CPU bf16: 1 and 2 rows the packed kernel, 9 the rows-in-int8 kernel, 200 dequantizing (beyond DYNAMIC_MAX_ROWS)
@pytest.mark.parametrize("rows", [1, 2, 9, 200])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_linear_matches_dequantized_reference(rows, dtype):
    g = torch.Generator().manual_seed(rows)
    linear = nn.Linear(256, 320, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(320, 256, generator=g) / 16)
    layer = Int8Linear.from_linear(linear, dtype)
    x = torch.randn(rows, 1, 256, generator=g).to(dtype)
    y = layer(x)
    assert y.shape == (rows, 1, 320) and y.dtype == dtype
    ref = F.linear(x.double(), layer.dequantized().double())
    # float32 accumulates exactly enough; bf16 output rounding is 2^-9 relative; rows quantized to int8
    # add their own rounding (a step of max|x| / 127 per row: ~0.8% for Gaussian rows)
    dynamic = dtype == torch.bfloat16 and PACKED_MAX_ROWS < rows <= DYNAMIC_MAX_ROWS
    assert rel_error(y, ref) < (1e-5 if dtype == torch.float32 else 2e-2 if dynamic else 8e-3)
    # and int8 is close to the float weights it replaces (quantization error ~0.4% of a row's max)
    assert rel_error(layer.dequantized(), linear.weight) < 5e-3


def test_rows_in_int8_do_not_depend_on_their_batch_mates():
    """int8_mm_dynamic scales each row by itself and sums integers exactly: a row alone, in a batch of 12 with
    rows 1000x larger, or an all-zero row beside it, gives the same bits."""
    g = torch.Generator().manual_seed(7)
    weight, scales = quantize_weight(torch.randn(48, 160, generator=g), torch.bfloat16)
    rows = torch.randn(12, 160, generator=g).to(torch.bfloat16)
    rows[3] *= 1000
    rows[5] = 0
    batched = int8_mm_dynamic(rows, weight, scales)
    for i in range(12):
        assert torch.equal(int8_mm_dynamic(rows[i : i + 1], weight, scales)[0], batched[i])
    assert bool((batched[5] == 0).all())
    ref = F.linear(rows.double(), (weight.double() * scales.double()[:, None]))
    assert rel_error(batched, ref) < 2e-2


@pytest.mark.parametrize("rows", [1, 3, 17, 300])  # packed, packed, rows in int8, dequantizing
def test_int8_linear_adds_its_bias(rows):
    g = torch.Generator().manual_seed(3)
    linear = nn.Linear(96, 40)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(40, 96, generator=g) / 8)
        linear.bias.copy_(torch.randn(40, generator=g))
    layer = Int8Linear.from_linear(linear, torch.bfloat16)
    x = torch.randn(rows, 96, generator=g).to(torch.bfloat16)
    ref = F.linear(x.double(), layer.dequantized().double(), linear.bias.double())
    assert rel_error(layer(x), ref) < 8e-3
    with pytest.raises(ValueError, match="bias"):
        Int8Linear(layer.weight, layer.scales, torch.zeros(41))


def test_conv1d_becomes_the_linear_it_equals():
    from faster_chatterbox.engine.quantize import conv1d_to_linear_
    from faster_chatterbox.models.gpt2 import GPT2, GPT2Config
    torch.manual_seed(0)
    gpt2 = GPT2(GPT2Config(dim=64, n_layers=2, n_heads=4, max_positions=64)).eval()
    for p in gpt2.parameters():
        p.data.normal_(0, 0.05)
    x = torch.randn(2, 5, 64)
    pos = torch.arange(5)
    before = gpt2(x, pos, gpt2.new_cache(2, 8), kv_len=5)  # the unwritten slots hold garbage: not attended
    replaced = conv1d_to_linear_(gpt2)
    assert len(replaced) == 8 and all(type(gpt2.get_submodule(n)) is nn.Linear for n in replaced)
    torch.testing.assert_close(gpt2(x, pos, gpt2.new_cache(2, 8), kv_len=5), before, rtol=1e-5, atol=1e-5)


# ---- what gets replaced -------------------------------------------------------------------------------------

def test_quantize_replaces_the_backbone_linears_only(t3_fp32):
    t3 = copy.deepcopy(t3_fp32)
    replaced = quantize_int8_(t3.tfmr, scale_dtype=torch.bfloat16)
    assert set(replaced) == BACKBONE_LINEARS
    for name, module in t3.tfmr.named_modules():
        assert type(module) is (Int8Linear if name in BACKBONE_LINEARS else type(module))
        assert not isinstance(module, nn.Linear)
    assert type(t3.speech_head) is nn.Linear and type(t3.cond_enc.spkr_enc) is nn.Linear
    q_proj = t3.tfmr.layers[1].self_attn.q_proj
    assert q_proj.weight.dtype == torch.int8 and q_proj.scales.dtype == torch.bfloat16

    partial = copy.deepcopy(t3_fp32)
    assert set(quantize_int8_(partial.tfmr, skip=("layers.0", "layers.2.mlp.up_proj"))) == {
        n for n in BACKBONE_LINEARS if not n.startswith("layers.0.") and n != "layers.2.mlp.up_proj"}


def test_fused_projections_change_no_weight_and_no_output(t3_fp32, inputs):
    """reduce_precision_ fuses q/k/v and gate/up (Llama.fuse_projections): in float32 a fused model gives the
    separate layers' logits to float32's rounding (prefill and decode steps, GQA heads); int8 quantizes the
    fused weight into exactly the separate layers' int8 rows and scales; bf16 rounds the same weights."""
    fused = copy.deepcopy(t3_fp32)
    fused.tfmr.fuse_projections()
    names = {n for n, m in fused.tfmr.named_modules() if type(m) is nn.Linear}
    assert names == FUSED_BACKBONE_LINEARS
    with torch.inference_mode():
        ref, out = (t3(*inputs, torch.zeros(3, dtype=torch.long), cfg=True) for t3 in (t3_fp32, fused))
        assert rel_error(out, ref) < 1e-5
        decoded = {}
        for name, t3 in (("separate", t3_fp32), ("fused", fused)):
            cache = t3.tfmr.new_cache(2, 40)
            x = torch.randn(2, 40, SMALL.llama.dim, generator=torch.Generator().manual_seed(3))
            t3.tfmr(x[:, :30], torch.arange(30), cache, 30)
            decoded[name] = torch.cat([t3.tfmr(x[:, i : i + 1], torch.tensor([i]), cache, i + 1)
                                       for i in range(30, 40)], dim=1)
        assert rel_error(decoded["fused"], decoded["separate"]) < 1e-5
    separate = reduce_precision_(copy.deepcopy(t3_fp32), "int8", fuse=False)
    int8 = reduce_precision_(copy.deepcopy(t3_fp32), "int8")
    for i in range(SMALL.llama.n_layers):
        attn, alone = int8.tfmr.layers[i].self_attn, separate.tfmr.layers[i].self_attn
        parts = (alone.q_proj, alone.k_proj, alone.v_proj)
        assert torch.equal(attn.qkv_proj.weight, torch.cat([p.weight for p in parts]))
        assert torch.equal(attn.qkv_proj.scales, torch.cat([p.scales for p in parts]))
    mlp = reduce_precision_(copy.deepcopy(t3_fp32), "bf16").tfmr.layers[0].mlp
    alone = reduce_precision_(copy.deepcopy(t3_fp32), "bf16", fuse=False).tfmr.layers[0].mlp
    assert torch.equal(mlp.gate_up_proj.weight, torch.cat((alone.gate_proj.weight, alone.up_proj.weight)))


def test_to_bf16_keeps_the_logits_and_the_state_dict_names(t3_fp32):
    t3 = to_bf16_(copy.deepcopy(t3_fp32))
    assert type(t3.speech_head) is Float32Linear and t3.speech_head.weight.dtype == torch.float32
    dtypes = {k: v.dtype for k, v in t3.state_dict().items()}
    assert dtypes.keys() == t3_fp32.state_dict().keys()
    assert {d for k, d in dtypes.items() if k != "speech_head.weight"} == {torch.bfloat16}
    assert torch.equal(t3.speech_head.weight, t3_fp32.speech_head.weight)
    assert t3.speech_head(torch.zeros(1, 256, dtype=torch.bfloat16)).dtype == torch.float32

    unguarded = to_bf16_(copy.deepcopy(t3_fp32), fp32_logits=False)
    assert type(unguarded.speech_head) is nn.Linear and unguarded.speech_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 37])
def test_bf16_linear_upcasts_inputs_of_more_than_its_rows(rows):
    """Bf16Linear (CPUs that emulate bf16): up to upcast_rows rows the bf16 GEMM, past them the same products
    in float32 (bf16 values cast up exactly), rounded to bf16; numpy-sized leading dims count as rows."""
    linear = nn.Linear(48, 24).to(torch.bfloat16)
    layer = Bf16Linear.from_linear(linear, upcast_rows=8)
    x = torch.randn(1, rows, 48, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    y = layer(x)
    if rows <= 8:
        expected = F.linear(x, linear.weight, linear.bias)
    else:
        expected = F.linear(x.float(), linear.weight.float(), linear.bias.float()).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)
    assert layer.weight is linear.weight and "upcast_rows=8" in repr(layer)


@pytest.mark.parametrize("rows", [1, 5, 16, 17, 40])
def test_int8_linear_on_a_cpu_that_emulates_bf16(rows):
    """upcast_rows (a CPU that emulates bf16): the packed kernel up to that many rows, past them (and for
    float32 inputs) the dequantized weights in float32; the bias added in the activations' dtype."""
    g = torch.Generator().manual_seed(rows)
    layer = Int8Linear.from_linear(nn.Linear(64, 24), scale_dtype=torch.bfloat16)
    layer.upcast_rows = 16
    x = torch.randn(2, rows, 64, generator=g)[:1].to(torch.bfloat16)
    flat = x.reshape(rows, 64)
    if rows <= 16:
        expected = torch.ops.aten._weight_int8pack_mm(flat, layer.weight, layer.scales)
    else:
        expected = F.linear(flat.float(), layer.dequantized()).to(torch.bfloat16)
    assert torch.equal(layer(x), (expected + layer.bias).view(1, rows, 24))
    assert torch.equal(layer(x.float()), F.linear(x.float(), layer.dequantized()) + layer.bias.float())


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduce_precision_upcasts_the_bf16_linears_where_asked(t3_fp32, inputs, precision):
    """upcast_rows: every bf16 nn.Linear (the backbone's under bf16, the perceiver's and embeddings' side
    Linears under both) becomes a Bf16Linear; int8 layers and the float32 speech head stay; the logits of a
    prefill stay within bf16's rounding of the plain bf16 model's."""
    plain = reduce_precision_(copy.deepcopy(t3_fp32), precision)
    upcast = reduce_precision_(copy.deepcopy(t3_fp32), precision, upcast_rows=4)
    kinds = lambda t3: {name: type(m) for name, m in t3.named_modules() if isinstance(m, (nn.Linear, Int8Linear))}
    assert kinds(plain).keys() == kinds(upcast).keys()
    for name, kind in kinds(plain).items():
        assert kinds(upcast)[name] is (Bf16Linear if kind is nn.Linear else kind), name
    assert Bf16Linear in set(kinds(upcast).values())
    assert all(m.upcast_rows == 4 for m in upcast.modules() if isinstance(m, (Bf16Linear, Int8Linear)))
    with torch.inference_mode():
        a, b = (t3(*inputs, torch.zeros(3, dtype=torch.long), cfg=True).float() for t3 in (plain, upcast))
    assert rel_error(b, a) < 2e-2


needs_fbgemm = pytest.mark.skipif(not fbgemm_fp16(torch.device("cpu")), reason="FBGEMM's fp16 GEMM (x86 CPUs)")


@needs_fbgemm
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 37), (400,)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_fp16_linear_multiplies_the_bf16_weights_in_float32(shape, bias):
    """PackedFp16Linear: the bf16 layer's own weights (fp16 holds every bf16 value of magnitude 2^-17 and up),
    rows and sums in float32: it equals float32 F.linear on the bf16 weights to float32's rounding, far closer
    than the bf16 GEMM, and returns the input's dtype whatever the leading dims."""
    g = torch.Generator().manual_seed(len(shape) * 10 + shape[-1])
    linear = nn.Linear(96, 40, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(torch.logspace(-6, 0, 96))  # weights down to ~1e-8: under fp16's normal range
    linear = linear.to(torch.bfloat16)
    layer = PackedFp16Linear.from_linear(linear)
    x = torch.randn(*shape, 96, generator=g).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (*shape, 40)
    exact = F.linear(x.double(), linear.weight.double(), None if linear.bias is None else linear.bias.double())
    packed_error = (layer(x.float()).double() - exact).abs().max().item()
    bf16_error = (F.linear(x, linear.weight, linear.bias).double() - exact).abs().max().item()
    assert packed_error < 1e-5 * exact.abs().max().item() and packed_error < bf16_error / 10
    assert "fp16 packed" in repr(layer) and not dict(layer.state_dict())


@needs_fbgemm
@pytest.mark.parametrize("rows", [1, 7, 16, 17, 203])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_fp16_linear_hands_many_rows_to_the_bf16_gemm(rows, bias):
    """bf16_past_rows (CPUs with native bf16): up to that many rows the packed kernel's float32 product, past
    it the bf16 layer's own `F.linear` exactly (whatever the leading dims: rows count over all of them); the
    bf16 copy stays out of the state dict."""
    linear = nn.Linear(64, 24, bias=bias).to(torch.bfloat16)
    layer = PackedFp16Linear(linear.weight, linear.bias, bf16_past_rows=16)
    plain = PackedFp16Linear.from_linear(linear)
    x = torch.randn(1, rows, 64, generator=torch.Generator().manual_seed(rows))  # float32, as pack_fp16_ runs
    y = layer(x)
    assert y.dtype == torch.float32 and y.shape == (1, rows, 24)
    expected = plain(x) if rows <= 16 else F.linear(x.to(torch.bfloat16), linear.weight, linear.bias).float()
    assert torch.equal(y, expected)
    assert not dict(layer.state_dict()) and "bf16 past 16 rows" in repr(layer)


@needs_fbgemm
def test_packed_fp16_linear_traces_whole_and_its_copies_keep_their_weights():
    """Under torch.compile(fullgraph=True) the layer multiplies through the `packed_fp16_linear` op (FBGEMM's
    packed weights are a TorchScript object, which dynamo cannot trace) to the same float32 output; a deep copy
    answers to a handle of its own, so it runs on after the original is gone."""
    layer = PackedFp16Linear.from_linear(nn.Linear(48, 20).to(torch.bfloat16))
    x = torch.randn(3, 7, 48, generator=torch.Generator().manual_seed(5))
    expected, handle = layer(x), layer.handle
    twin = copy.deepcopy(layer)
    del layer
    gc.collect()
    assert twin.handle != handle
    torch._dynamo.reset()
    compiled = torch.compile(twin, fullgraph=True, dynamic=False, backend="aot_eager")
    assert torch.equal(compiled(x), expected)


@needs_fbgemm
def test_packed_fp16_refuses_weights_past_fp16s_range(t3_fp32):
    """A weight past 65504 would saturate in fp16: PackedFp16Linear refuses it by name, and pack_fp16_ keeps
    such a layer a float32 Linear of its bf16-rounded weights while the others are packed."""
    big = nn.Linear(8, 4).to(torch.bfloat16)
    with torch.no_grad():
        big.weight[0, 0] = 70000.0
    with pytest.raises(ValueError, match="fp16's range"):
        PackedFp16Linear.from_linear(big)
    t3 = copy.deepcopy(t3_fp32)
    with torch.no_grad():
        t3.tfmr.layers[0].mlp.up_proj.weight[0, 0] = 70000.0
    mlp = t3.tfmr.layers[0].mlp
    expected = torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight)).to(torch.bfloat16).float()
    reduce_precision_(t3, "bf16", upcast_rows=16, packed_fp16=True)
    kept = t3.tfmr.layers[0].mlp.gate_up_proj  # fused with the gate, which is kept with it
    assert type(kept) is nn.Linear and kept.weight.dtype == torch.float32 and torch.equal(kept.weight, expected)
    assert type(t3.tfmr.layers[0].mlp.down_proj) is PackedFp16Linear


@needs_fbgemm
def test_reduce_precision_packs_the_bf16_weights_in_a_float32_t3(t3_fp32, inputs):
    """packed_fp16: every nn.Linear of the bf16 model becomes a PackedFp16Linear, the speech head stays a
    float32 Float32Linear, everything else stays float32; the logits of a prefill stay within bf16's rounding
    of the plain bf16 model's and nearer float32's than they are. fp32 and int8 weights are left as they are."""
    plain = reduce_precision_(copy.deepcopy(t3_fp32), "bf16")
    packed = reduce_precision_(copy.deepcopy(t3_fp32), "bf16", upcast_rows=16, packed_fp16=True)
    kinds = lambda t3: {name: type(m) for name, m in t3.named_modules()
                        if isinstance(m, (nn.Linear, PackedFp16Linear))}
    assert kinds(plain).keys() == kinds(packed).keys()
    for name, kind in kinds(plain).items():
        assert kinds(packed)[name] is (PackedFp16Linear if kind is nn.Linear else kind), name
    assert {f"tfmr.{name}" for name in FUSED_BACKBONE_LINEARS} <= {n for n, k in kinds(packed).items()
                                                             if k is PackedFp16Linear}
    assert {p.dtype for p in packed.parameters()} == {torch.float32}
    with torch.inference_mode():
        ref, a, b = (t3(*inputs, torch.zeros(3, dtype=torch.long), cfg=True).float()
                     for t3 in (t3_fp32, plain, packed))
    assert rel_error(b, a) < 2e-2 and rel_error(b, ref) < rel_error(a, ref)
    hybrid = reduce_precision_(copy.deepcopy(t3_fp32), "bf16", packed_fp16=True, packed_bf16_past_rows=4)
    layers = [m for m in hybrid.modules() if isinstance(m, PackedFp16Linear)]
    assert layers and {m.bf16_past_rows for m in layers} == {4} and {m.weight.dtype for m in layers} == {torch.bfloat16}
    assert {m.bf16_past_rows for m in packed.modules() if isinstance(m, PackedFp16Linear)} == {None}
    for precision in ("fp32", "int8"):  # nothing to pack (settings replaced by hand may still ask)
        asked = reduce_precision_(copy.deepcopy(t3_fp32), precision, packed_fp16=True)
        assert kinds(asked) == kinds(reduce_precision_(copy.deepcopy(t3_fp32), precision)), precision


@pytest.mark.parametrize("rows", [1, 3, 16, 17, 40])
@pytest.mark.parametrize("bias", [True, False])
def test_float32_linear_swaps_the_operands_for_few_rows(rows, bias):
    """Float32Linear on CPU: up to 16 rows the weight is the GEMM's left operand (faster with MKL there): the
    same float32 product as F.linear to its rounding, contiguous, for bf16 and float32 inputs of any
    leading dims."""
    linear = nn.Linear(64, 33, bias=bias)
    layer = Float32Linear.from_linear(linear)
    x = torch.randn(1, rows, 64, generator=torch.Generator().manual_seed(rows))
    for inp in (x, x.to(torch.bfloat16)):
        y = layer(inp)
        expected = F.linear(inp.float(), linear.weight, linear.bias)
        assert y.dtype == torch.float32 and y.shape == (1, rows, 33) and y.is_contiguous()
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_reduce_precision_rejects_bad_input(t3_fp32):
    with pytest.raises(ValueError, match="unknown precision"):
        reduce_precision_(copy.deepcopy(t3_fp32), "fp8")
    with pytest.raises(ValueError, match="float32 T3"):
        reduce_precision_(to_bf16_(copy.deepcopy(t3_fp32)), "int8")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("kv_dtype", [None, torch.float32])
def test_reduced_t3_decodes(t3_fp32, inputs, precision, kv_dtype, monkeypatch):
    t3 = reduce_precision_(copy.deepcopy(t3_fp32), precision)
    t3.tfmr.kv_dtype = kv_dtype  # the presets keep a float32 cache (and attention) on CPU
    cache_dtypes = set()  # of the caches the decode runs in
    forward = t3.tfmr.forward
    monkeypatch.setattr(t3.tfmr, "forward", lambda x, pos, cache, **kw: (cache_dtypes.add(cache.dtype),
                                                                         forward(x, pos, cache, **kw))[1])
    torch.manual_seed(0)
    tokens = generate_speech_tokens(t3, *inputs, max_new_tokens=12)
    assert tokens.dtype == torch.long and tokens.shape[0] <= 12
    assert bool((tokens >= 0).all()) and bool((tokens < SMALL.speech_tokens_dict_size).all())
    assert cache_dtypes == {kv_dtype or torch.bfloat16}  # default: the KV cache follows the weights


# ---- quality against float32 --------------------------------------------------------------------------------

def _teacher_forced(t3: T3, inputs, tokens: torch.Tensor, head_scale: float) -> torch.Tensor:
    """(2, S, V) float32 logits before each token, the speech logits scaled by `head_scale`."""
    with torch.inference_mode():
        return t3(*inputs, tokens, cfg=True)[:, :-1].float() * head_scale


def _distances(ref: torch.Tensor, low: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step: KL(ref || low) of the sampling distributions before min_p, and top-1 agreement of the
    CFG-combined logits."""
    params = replace(SamplingParams(), min_p=0.0)
    seen = torch.zeros(1, ref.shape[-1], dtype=torch.bool)
    seen[0, SMALL.start_speech_token] = True
    kl, top1 = [], []
    for i in range(ref.shape[1]):
        p, q = (next_token_probs(lg[:, i], seen, params) for lg in (ref, low))
        kl.append((torch.xlogy(p, p) - torch.xlogy(p, q)).sum())
        top1.append(cfg_combine(ref[:, i], 0.5).argmax() == cfg_combine(low[:, i], 0.5).argmax())
        seen[0, tokens[i]] = True
    return torch.stack(kl), torch.stack(top1).float()


@pytest.fixture(scope="module")
def fp32_run(t3_fp32, inputs):
    torch.manual_seed(0)
    tokens = generate_speech_tokens(t3_fp32, *inputs, max_new_tokens=STEPS)
    return tokens, _teacher_forced(t3_fp32, inputs, tokens, 1.0)  # (S,), (2, S, V)


# Bounds at ~3x the measured KL mean / max on this model (flat logits: bf16 2.2e-4 / 3.6e-4, int8 7.9e-4 /
# 1.2e-3; speech logits x4, fp32 entropy ~1.3 nats: bf16 2.7e-3 / 6.6e-3, int8 9.9e-3 / 2.5e-2); top-1 of the
# raw logits measured 97% (bf16) and 90% (int8) over other seeds too: flat random logits have near-ties.
@pytest.mark.parametrize("precision, head_scale, kl_mean, kl_max", [
    ("bf16", 1.0, 8e-4, 1.5e-3), ("int8", 1.0, 2.5e-3, 4e-3),
    ("bf16", 4.0, 8e-3, 2e-2), ("int8", 4.0, 3e-2, 8e-2),
])
@pytest.mark.parametrize("kv_dtype", [None, torch.float32])
def test_reduced_precision_stays_close_to_fp32(t3_fp32, inputs, fp32_run, precision, head_scale, kl_mean, kl_max,
                                               kv_dtype):
    tokens, ref = fp32_run
    t3 = reduce_precision_(copy.deepcopy(t3_fp32), precision)
    t3.tfmr.kv_dtype = kv_dtype
    # scaling float32 logits by a power of two is exactly scaling the (float32) speech head's weights
    kl, top1 = _distances(ref * head_scale, _teacher_forced(t3, inputs, tokens, head_scale), tokens)
    assert float(kl.mean()) < kl_mean and float(kl.max()) < kl_max
    assert float(top1.mean()) >= 0.8
