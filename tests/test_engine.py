"""One engine, many callers: per-call voices, settings resolved once and returned, seeds by hashing,
numbers of any real type, upstream's drop-in semantics, and the engine's lifecycle."""

import threading
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from faster_chatterbox import CallSettings, ChatterboxTTS, NoSpeechError, Voice
from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.random_checkpoint import write_random_checkpoint
import faster_chatterbox.settings as settings_module
from faster_chatterbox.settings import call_settings, engine_settings, flash_engine_settings, stream_seed

TEXT = "A voice of its own, for this call alone."


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("engine") / "ckpt", seed=5, small=True)


@pytest.fixture(scope="module")
def fast(small_ckpt):
    with ChatterboxTTS.from_local(small_ckpt, device="cpu", preset="fast", watermark=False) as tts:
        yield tts


@pytest.fixture(scope="module")
def fast_fp32(small_ckpt):
    """fast's engine with T3 in float32, where a row's tokens do not depend on its batch mates exactly (bf16
    and int8 kernels round by batch shape: BENCHMARKS.md, section 13)."""
    settings = replace(engine_settings("fast", "cpu"), t3_precision="fp32", kv_dtype=None)
    with ChatterboxTTS.from_local(small_ckpt, device="cpu", settings=settings, watermark=False) as tts:
        yield tts


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    made = []
    for k, (seconds, sr, channels) in enumerate([(7.3, 44100, 1), (4.87, 48000, 2), (9.99, 16000, 1), (6.1, 22050, 6)]):
        wav = synthetic_voice(seconds, sr, seed=10 + k)
        path = folder / f"voice{k}.wav"
        sf.write(path, np.repeat(wav[:, None], channels, axis=1) if channels > 1 else wav, sr)
        made.append(path)
    return made


def test_eight_threads_four_voices_each_as_alone(fast_fp32, clips):
    """8 concurrent calls, 4 voices (clip paths and Voice objects), their own exaggerations and seeds: each
    output equals the same call made alone, and setting the default voice meanwhile changes none of them."""
    fast = fast_fp32
    voices = [clips[0], fast.voice_from_clip(clips[1]), clips[2], fast.voice_from_clip(clips[3])]
    calls = [dict(voice=voices[k % 4], exaggeration=0.3 + 0.1 * k, seed=100 + k) for k in range(8)]
    alone = [fast.synthesize(TEXT, max_new_tokens=30, **kw).audio for kw in calls]
    together = [None] * 8
    start = threading.Barrier(9)

    def call(k):
        start.wait()
        together[k] = fast.synthesize(TEXT, max_new_tokens=30, **calls[k]).audio

    threads = [threading.Thread(target=call, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    start.wait()
    for clip in clips:  # meanwhile another caller keeps changing the default voice
        fast.prepare_conditionals(clip, exaggeration=0.9)
    for thread in threads:
        thread.join(timeout=300)
    for k in range(8):
        assert np.array_equal(together[k], alone[k]), f"call {k} changed when run beside others"
    assert len({a.tobytes() for a in alone}) == 8  # they are different calls


def test_result_carries_settings_and_seed_that_reproduce_it(fast, clips):
    first = fast.synthesize(TEXT, voice=clips[0], exaggeration=0.6, max_new_tokens=25)  # seed=None: one is drawn
    assert isinstance(first.settings, CallSettings) and isinstance(first.seed, int)
    assert first.voice.exaggeration == pytest.approx(0.6)
    again = fast.synthesize(TEXT, voice=first.voice, settings=first.settings)
    assert np.array_equal(again.audio, first.audio)
    with pytest.raises(ValueError, match="either settings or call arguments"):
        fast.synthesize(TEXT, settings=first.settings, seed=3)


def test_exact_global_stream_is_reproducible_from_its_result(small_ckpt):
    with ChatterboxTTS.from_local(small_ckpt, device="cpu", preset="exact", watermark=False) as exact:
        first = exact.synthesize("Hello there.", max_new_tokens=12)  # seed=None: the global RNG as it stands
        assert first.seed is None and first.settings.rng_state is not None
        torch.manual_seed(999)  # the global RNG moves on
        assert np.array_equal(exact.synthesize("Hello there.", voice=first.voice, settings=first.settings).audio,
                              first.audio)


def test_seed_streams_are_hashed_apart():
    streams = {stream_seed(s, purpose, chunk, attempt) for s in range(50) for purpose in ("t3", "s3gen")
               for chunk in range(8) for attempt in range(3)}
    assert len(streams) == 50 * 2 * 8 * 3  # no two (seed, purpose, chunk, attempt) coincide
    assert stream_seed(0, "t3", 1, 0) != stream_seed(7919, "t3", 0, 0)  # the old arithmetic's collision
    big = {stream_seed(s, "t3", 0, 0) for s in (0, 2**63, 2**64, 2**70, 2**70 + 1)}
    assert len(big) == 5  # seeds beyond 64 bits count in full
    assert all(0 <= s < 2**63 for s in streams)


def test_numbers_of_any_real_type(fast):
    wav = fast.generate("Numbers from numpy.", seed=np.int64(3), temperature=np.float32(0.8),
                        cfg_weight=torch.tensor(0.5), max_new_tokens=np.int32(10), exaggeration=np.float64(0.4))
    ref = fast.generate("Numbers from numpy.", seed=3, temperature=0.8, cfg_weight=0.5, max_new_tokens=10,
                        exaggeration=0.4)
    assert torch.equal(wav, ref)
    assert not torch.equal(fast.generate("Numbers from numpy.", seed=2**70, max_new_tokens=10),
                           fast.generate("Numbers from numpy.", seed=2**70 + 1, max_new_tokens=10))


@pytest.mark.parametrize("kwargs,error,problem", [
    (dict(text=b"bytes"), TypeError, "text must be a str"),
    (dict(text=None), TypeError, "text must be a str"),
    (dict(seed=1.5), TypeError, "seed must be an integer"),
    (dict(seed="3"), TypeError, "seed must be an integer"),
    (dict(temperature="hot"), TypeError, "temperature must be a real number"),
    (dict(max_new_tokens=10.0), TypeError, "max_new_tokens must be an integer"),
    (dict(max_new_tokens=True), TypeError, "max_new_tokens must be an integer"),
    (dict(voice=3), TypeError, "voice must be"),
    (dict(repetition_penalty=1e-9), ValueError, "repetition_penalty must be a number >= 0.1"),  # NaN logits below
    (dict(temperature=5e-324), ValueError, "temperature must be a number >= 0.01"),
    (dict(voice="nobody"), ValueError, "neither a voice name nor a clip"),
])
def test_bad_call_arguments_are_named(fast, kwargs, error, problem):
    kwargs = {"text": "Hi.", **kwargs}
    with pytest.raises(error, match=problem):
        fast.generate(**kwargs)


def test_drop_in_semantics(fast):
    wav = fast.generate("Drop in.", seed=1, max_new_tokens=10)
    wav /= wav.abs().max()  # an ordinary tensor, as upstream returns (not an inference-mode one)
    assert fast.device == "cpu" and fast.sr == 24000
    assert torch.equal(fast.generate("Drop in.", seed=1, max_new_tokens=10, audio_prompt_path=""),
                       fast.generate("Drop in.", seed=1, max_new_tokens=10))  # "" is no prompt, as upstream
    fast.generate("Top one.", seed=1, max_new_tokens=10, top_p=0.0)  # keeps the most probable token, as upstream

    class Marker:
        def apply_watermark(self, wav, sample_rate):
            return np.zeros_like(wav)

    saved = fast.watermarker
    fast.watermarker = Marker()  # upstream users replace the watermarker by assignment
    try:
        assert float(fast.generate("Marked.", seed=1, max_new_tokens=10, watermark=True).abs().max()) == 0.0
    finally:
        fast.watermarker = saved


def test_a_call_that_makes_no_speech_says_so(fast, monkeypatch):
    """T3 stopping at once for every chunk (as extreme sampling settings make it): an error, not (1, 0) audio."""
    from concurrent.futures import Future

    def stop_at_once(request, on_tokens=None, urgent=False):
        done = Future()
        done.set_result(torch.tensor([fast.t3.cfg.stop_speech_token]))
        return done

    monkeypatch.setattr(fast.engine.scheduler, "submit", stop_at_once)
    with pytest.raises(NoSpeechError, match="no speech.*repetition_penalty=0.2"):
        fast.generate("Nothing comes of this.", repetition_penalty=0.2, seed=1, max_new_tokens=20)
    with pytest.raises(NoSpeechError):
        list(fast.generate_stream("Nothing comes of this either.", seed=1, max_new_tokens=20))


def test_voice_library(fast, clips, tmp_path):
    library = fast.use_voice_library(tmp_path / "voices")
    voice = library.add_clip("narrator", clips[0].read_bytes(), ".wav")
    library.add_voice("saved one", fast.voice_from_clip(clips[1]))
    assert library.names() == ["narrator", "saved one"] and "narrator" in library
    named = fast.synthesize(TEXT, voice="narrator", seed=4, max_new_tokens=20)
    direct = fast.synthesize(TEXT, voice=voice, seed=4, max_new_tokens=20)
    assert np.array_equal(named.audio, direct.audio)
    with pytest.raises(FileExistsError):
        library.add_clip("narrator", clips[2].read_bytes(), ".wav")
    for bad in ("../escape", "", ".hidden", "a/b", "x" * 65):
        with pytest.raises(ValueError, match="invalid voice name"):
            library.add_clip(bad, clips[2].read_bytes(), ".wav")
    with pytest.raises(ValueError):  # not audio: nothing is stored
        library.add_clip("broken", b"not a clip", ".wav")
    assert "broken" not in library and not list((tmp_path / "voices").glob(".*upload*"))
    library.delete("narrator")
    assert library.names() == ["saved one"]
    with pytest.raises(KeyError):
        library.get("narrator")
    assert isinstance(library.get("saved one"), Voice)


def test_settings_are_resolved_in_one_place(monkeypatch):
    monkeypatch.setattr(settings_module, "native_bf16", lambda device: True)  # an AMX CPU
    monkeypatch.setattr(settings_module, "amx_tiles", lambda device: True)
    fast_cpu = engine_settings("fast", "cpu")
    assert fast_cpu.t3_precision == "bf16" and fast_cpu.kv_dtype == torch.float32 and fast_cpu.max_batch == 8
    exact = call_settings(engine_settings("exact", "cpu"), seed=1)
    assert not exact.continuous_batching and not exact.seeded_streams and exact.solve.n_timesteps is None
    upstream_call = call_settings(fast_cpu, fast_inference=False, seed=1)
    assert upstream_call == exact  # fast_inference=False: every call-time setting is upstream's
    assert exact.chunk_rows is None and call_settings(fast_cpu).chunk_rows == fast_cpu.max_batch == 8
    assert call_settings(engine_settings("fastest", "cuda")).chunk_rows == 32  # the batch the device runs
    turbo = engine_settings("fastest", "cpu", model="turbo")
    assert turbo.t3_precision == "int8"  # GPT-2's layers become Linears, which int8 takes
    with pytest.raises(ValueError, match="unknown preset"):
        engine_settings("fastest-ever", "cpu")
    assert fast_cpu.s3gen_dtype == torch.bfloat16 and fast_cpu.t3_upcast_rows is None
    assert not fast_cpu.t3_packed_fp16 and not engine_settings("fast", "cuda").t3_packed_fp16


@pytest.mark.parametrize("model", ["chatterbox", "turbo"])
@pytest.mark.parametrize("fbgemm", [True, False])
def test_cpus_that_emulate_bf16_keep_s3gen_in_float32_and_pack_or_upcast_t3(monkeypatch, model, fbgemm):
    """An AVX2 CPU (devices.native_bf16 False): S3Gen float32. With FBGEMM (x86) T3's bf16 weights are packed
    for its fp16 GEMM, fastest's too (int8 is no faster there); without it (ARM) the preset's weights (bf16,
    int8) with prefills in float32 past 16 rows. Exact is untouched."""
    monkeypatch.setattr(settings_module, "native_bf16", lambda device: False)
    monkeypatch.setattr(settings_module, "fbgemm_fp16", lambda device: fbgemm)
    for preset, precision in (("fast", "bf16"), ("fastest", "bf16" if fbgemm else "int8")):
        s = engine_settings(preset, "cpu", model=model)
        assert (s.t3_precision, s.s3gen_dtype, s.t3_upcast_rows, s.kv_dtype, s.t3_packed_fp16) == (
            precision, torch.float32, 16, torch.float32, fbgemm)
        assert s.t3_packed_bf16_past_rows is None  # emulated bf16 is slower at every row count
    exact = engine_settings("exact", "cpu", model=model)
    assert (exact.t3_precision, exact.s3gen_dtype, exact.t3_upcast_rows, exact.t3_packed_fp16) == (
        "fp32", torch.float32, None, False)


@pytest.mark.parametrize("model", ["chatterbox", "turbo"])
def test_x86_cpus_with_native_bf16_but_no_amx_pack_fasts_t3_and_keep_int8(monkeypatch, model):
    """A Zen 4 (AVX512-BF16, no AMX tiles): fast's T3 on FBGEMM's fp16 GEMM up to 16 rows and oneDNN's bf16
    GEMM past them, fastest's int8 kept (faster still there), S3Gen bf16 as on any CPU with native bf16, no
    float32 upcast of prefills."""
    monkeypatch.setattr(settings_module, "native_bf16", lambda device: True)
    monkeypatch.setattr(settings_module, "amx_tiles", lambda device: False)
    monkeypatch.setattr(settings_module, "fbgemm_fp16", lambda device: device.type == "cpu")  # as on x86
    for preset, precision, packed in (("fast", "bf16", True), ("fastest", "int8", False)):
        s = engine_settings(preset, "cpu", model=model)
        assert (s.t3_precision, s.t3_packed_fp16, s.s3gen_dtype, s.t3_upcast_rows, s.kv_dtype) == (
            precision, packed, torch.bfloat16, None, torch.float32)
        assert s.t3_packed_bf16_past_rows == (16 if packed else None)
    assert not engine_settings("exact", "cpu", model=model).t3_packed_fp16
    assert not engine_settings("fast", "cuda", model=model).t3_packed_fp16
    flash = flash_engine_settings("fast", "cpu")  # its T3 multiplies blocks: oneDNN's bf16 GEMM throughout
    assert (flash.t3_precision, flash.t3_packed_fp16, flash.t3_packed_bf16_past_rows) == ("bf16", False, None)
    monkeypatch.setattr(settings_module, "native_bf16", lambda device: False)
    assert flash_engine_settings("fast", "cpu").t3_packed_fp16  # where bf16 is emulated FBGEMM serves it too


def test_amx_tiles_reads_the_cpu(monkeypatch):
    import faster_chatterbox.devices as devices
    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        assert devices.amx_tiles(torch.device("cpu")) is amx
    assert not devices.amx_tiles(torch.device("cuda"))
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert devices.amx_tiles(torch.device("cpu")) is False


def test_fbgemm_fp16_is_found_on_x86_cpus_only(monkeypatch):
    import faster_chatterbox.devices as devices
    assert not devices.fbgemm_fp16(torch.device("cuda")) and not devices.fbgemm_fp16(torch.device("mps"))
    x86 = "fbgemm" in torch.backends.quantized.supported_engines
    assert devices.fbgemm_fp16(torch.device("cpu")) is (x86 and devices._fbgemm_fp16_runs())

    def no_fbgemm(*args):
        raise RuntimeError("Your CPU does not support FBGEMM.")  # what torch says on a CPU without AVX2
    monkeypatch.setattr(torch.ops.quantized, "linear_prepack_fp16", no_fbgemm)
    assert devices._fbgemm_fp16_runs.__wrapped__() is False  # the trial run, uncached


def test_native_bf16_reads_the_cpu(monkeypatch):
    import faster_chatterbox.devices as devices
    assert devices.native_bf16(torch.device("cuda")) and devices.native_bf16(torch.device("mps"))
    for avx512_bf16, amx, native in [(True, False, True), (False, True, True), (False, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        assert devices.native_bf16(torch.device("cpu")) is native
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert devices.native_bf16(torch.device("cpu")) is False  # a torch without the checks: float32 is safe


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_engines_created_and_closed_free_their_thread_and_memory(small_ckpt):
    import gc

    rss = []
    for k in range(5):
        with ChatterboxTTS.from_local(small_ckpt, device="cpu", preset="fast", watermark=False) as tts:
            tts.synthesize(TEXT, seed=k, max_new_tokens=20)
        del tts
        gc.collect()
        assert not any(t.name == "t3-scheduler" and t.is_alive() for t in threading.enumerate())
        rss.append(_rss_mb())
    # the first rounds warm allocators and caches; after that, closing gives everything back
    assert rss[-1] - rss[1] < 40, f"resident memory grows with every engine: {rss}"
