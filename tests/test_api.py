"""The public API, the loader and the CLI on a small random checkpoint: behaviour and clear errors."""

import logging
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.checkpoint import CHECKPOINT_FILES, CheckpointError, load_weights
from faster_chatterbox.cli import main
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.tts import ChatterboxTTS, Conditionals


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("small") / "ckpt", seed=1, small=True)


@pytest.fixture(scope="module")
def tts(small_ckpt):
    return ChatterboxTTS.from_local(small_ckpt, device="cpu", watermark=False)


@pytest.fixture
def ckpt_copy(small_ckpt, tmp_path):
    return shutil.copytree(small_ckpt, tmp_path / "ckpt")


def test_generate_shape_and_determinism(tts):
    wav = tts.generate("Hello world.", seed=3, max_new_tokens=12)
    assert wav.dtype == torch.float32 and wav.ndim == 2 and wav.shape[0] == 1
    # 12 tokens at most, minus the special ids that are dropped; 2 mel frames of 480 samples per token
    assert 0 < wav.shape[1] <= 12 * 960 and wav.shape[1] % 960 == 0
    assert torch.isfinite(wav).all()
    assert torch.equal(tts.generate("Hello world.", seed=3, max_new_tokens=12), wav)
    assert tts.sr == 24000 and tts.random_weights


def test_voice_cloning_and_conds_round_trip(tts, tmp_path):
    clip = tmp_path / "voice.wav"
    sf.write(clip, synthetic_voice(4.0, 16000, seed=9), 16000)
    builtin = tts.conds
    try:
        tts.prepare_conditionals(clip, exaggeration=0.8)
        assert tts.conds.t3.cond_prompt_speech_tokens.shape == (1, 100)  # 4 s at 25 Hz (under the 150 cap)
        assert float(tts.conds.t3.emotion_adv) == pytest.approx(0.8)
        tts.conds.save(tmp_path / "voice.pt")
        loaded = Conditionals.load(tmp_path / "voice.pt")
        assert torch.equal(loaded.gen["prompt_feat"], tts.conds.gen["prompt_feat"])
        assert torch.equal(loaded.t3.speaker_emb, tts.conds.t3.speaker_emb)
    finally:
        tts.conds = builtin


@pytest.mark.parametrize("kwargs,problem", [
    (dict(text=""), "nothing to speak"),
    (dict(text="  \n\t "), "nothing to speak"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=0), "temperature"),
    (dict(cfg_weight=-1), "cfg_weight"),
    (dict(min_p=1.5), "min_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(top_p=-0.1), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_retries=11), "max_retries"),
    (dict(max_retries=-1), "max_retries"),
    (dict(token_budget_factor=0), "token_budget_factor"),
    (dict(token_budget_factor=-2.0), "token_budget_factor"),
    (dict(token_budget_factor=float("nan")), "token_budget_factor"),
    (dict(seed=-1), "seed"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(exaggeration=float("nan")), "exaggeration"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=10_000), "max_new_tokens"),
    (dict(n_timesteps=0), "n_timesteps"),
    (dict(audio_prompt_path="/nonexistent/voice.wav"), "does not exist"),
])
def test_generate_rejects_bad_input(tts, kwargs, problem):
    kwargs = {"text": "Hi.", **kwargs}
    with pytest.raises(ValueError, match=problem):
        tts.synthesize(**kwargs)  # generate's arguments and synthesize's own (max_retries, token_budget_factor)


@pytest.mark.parametrize("content,problem", [(b"not audio at all", "cannot be read"), ("silent", "silent"),
                                             ("empty", "empty")])
def test_bad_reference_clips(tts, tmp_path, content, problem):
    clip = tmp_path / "clip.wav"
    if content == "silent":
        sf.write(clip, np.zeros(48000, dtype=np.float32), 24000)
    elif content == "empty":
        sf.write(clip, np.zeros(0, dtype=np.float32), 24000)
    else:
        clip.write_bytes(content)
    with pytest.raises(ValueError, match=problem):
        tts.prepare_conditionals(clip)


def test_unknown_device_and_preset(small_ckpt):
    with pytest.raises(ValueError, match="unknown device"):
        ChatterboxTTS.from_local(small_ckpt, device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ChatterboxTTS.from_local(small_ckpt, device="cuda")
    with pytest.raises(ValueError, match="unknown preset"):
        ChatterboxTTS.from_local(small_ckpt, device="cpu", preset="turbo-max")


@pytest.mark.parametrize("name", [n for n in CHECKPOINT_FILES if n != "conds.pt"])
def test_missing_file_is_named(ckpt_copy, name):
    (ckpt_copy / name).unlink()
    with pytest.raises(CheckpointError, match=name):
        ChatterboxTTS.from_local(ckpt_copy, device="cpu", watermark=False)


def test_truncated_safetensors_is_named(ckpt_copy):
    path = ckpt_copy / "t3_cfg.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="t3_cfg.safetensors.*truncated or corrupt"):
        ChatterboxTTS.from_local(ckpt_copy, device="cpu", watermark=False)


def test_missing_and_misshaped_tensors_are_named(ckpt_copy):
    path = ckpt_copy / "t3_cfg.safetensors"
    state = load_file(path)
    del state["speech_head.weight"]
    state["text_emb.weight"] = state["text_emb.weight"][:10]
    save_file(state, path)
    with pytest.raises(CheckpointError) as err:
        ChatterboxTTS.from_local(ckpt_copy, device="cpu", watermark=False)
    message = str(err.value)
    assert "t3_cfg.safetensors" in message and "speech_head.weight" in message and "text_emb.weight (10, 128)" in message


def test_s3gen_tolerates_extra_and_recomputed_keys(ckpt_copy, caplog):
    """Upstream's file may hold keys we do not use (and its tokenizer mel filters/window, which we recompute);
    old-style weight-norm names load too. Every learned tensor must still be there."""
    path = ckpt_copy / "s3gen.safetensors"
    state = load_file(path)
    state["tokenizer._mel_filters"] = torch.zeros(128, 201)
    state["tokenizer.window"] = torch.zeros(400)
    state["some.future.extra"] = torch.zeros(3)
    key = "mel2wav.conv_pre.parametrizations.weight.original0"
    state["mel2wav.conv_pre.weight_g"] = state.pop(key)
    state["mel2wav.conv_pre.weight_v"] = state.pop(key.replace("original0", "original1"))
    save_file(state, path)
    with caplog.at_level(logging.INFO, logger="faster_chatterbox.checkpoint"):
        tts = ChatterboxTTS.from_local(ckpt_copy, device="cpu", watermark=False)
    assert "ignoring 3 tensors" in caplog.text and "some.future.extra" in caplog.text
    assert torch.isfinite(tts.generate("Ok.", seed=0, max_new_tokens=5)).all()
    # ... but an unknown key in a strictly loaded file is an error
    t3_path = ckpt_copy / "t3_cfg.safetensors"
    t3_state = load_file(t3_path)
    t3_state["stray.weight"] = torch.zeros(1)
    save_file(t3_state, t3_path)
    with pytest.raises(CheckpointError, match="stray.weight"):
        ChatterboxTTS.from_local(ckpt_copy, device="cpu", watermark=False)


def test_load_weights_never_leaves_a_parameter_at_init():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    state = {k: v for k, v in module.state_dict().items() if k != "1.running_var"}
    with pytest.raises(CheckpointError, match="1.running_var"):
        load_weights(module, state, "demo.safetensors")
    del state["1.num_batches_tracked"]  # counters are not needed for inference
    state["1.running_var"] = torch.ones(2)
    load_weights(module, state, "demo.safetensors")


def test_from_pretrained_uses_the_hf_cache_offline(small_ckpt, tmp_path, monkeypatch):
    """A pre-populated Hugging Face cache serves from_pretrained with HF_HUB_OFFLINE=1 and no network."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--ResembleAI--chatterbox" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--ResembleAI--chatterbox" / "refs").mkdir()
    (cache / "models--ResembleAI--chatterbox" / "refs" / "main").write_text("0" * 40)
    for item in small_ckpt.iterdir():
        shutil.copy(item, snapshot / item.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    tts = ChatterboxTTS.from_pretrained(device="cpu", watermark=False, cache_dir=cache)
    assert tts.conds is not None and tts.random_weights
    with pytest.raises(CheckpointError, match="--checkpoint"):
        ChatterboxTTS.from_pretrained(device="cpu", watermark=False, cache_dir=tmp_path / "empty-cache")


def test_cli_speak_writes_a_24khz_wav(small_ckpt, tmp_path, capsys):
    out = tmp_path / "out.wav"
    code = main(["speak", "Hello world.", "--checkpoint", str(small_ckpt), "-o", str(out), "--seed", "1",
                 "--max-new-tokens", "10", "--no-watermark"])
    assert code == 0
    info = sf.info(out)
    assert info.samplerate == 24000 and info.channels == 1 and info.frames > 0
    text_file = tmp_path / "chapter.txt"
    text_file.write_text("A text from a file.", encoding="utf-8")
    out_flac = tmp_path / "out.flac"
    assert main(["speak", "--text-file", str(text_file), "--checkpoint", str(small_ckpt), "-o", str(out_flac),
                 "--max-new-tokens", "5", "--no-watermark"]) == 0
    assert sf.info(out_flac).samplerate == 24000


@pytest.mark.parametrize("argv,problem", [
    (["speak", "   ", "-o", "{tmp}/x.wav"], "text is empty"),
    (["speak", "Hi", "-o", "{tmp}/x.wav", "--checkpoint", "{tmp}/nowhere"], "does not exist"),
    (["speak", "Hi", "-o", "{tmp}/x.wav", "--checkpoint", "{ckpt}", "--device", "quantum"], "unknown device"),
    (["speak", "Hi", "-o", "{tmp}/x.wav", "--checkpoint", "{ckpt}", "--temperature", "-1"], "temperature"),
    (["speak", "Hi", "-o", "{tmp}/x.wav", "--checkpoint", "{ckpt}", "--voice", "{tmp}/none.wav"], "does not exist"),
    (["speak", "Hi", "-o", "{tmp}/x.mp9", "--checkpoint", "{ckpt}", "--max-new-tokens", "3"], "unsupported extension"),
    (["speak", "--text-file", "{tmp}/missing.txt", "-o", "{tmp}/x.wav"], "cannot read text file"),
])
def test_cli_errors_are_one_line(small_ckpt, tmp_path, capsys, argv, problem):
    argv = [a.format(tmp=tmp_path, ckpt=small_ckpt) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()


def test_cli_offline_without_cache_points_to_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    assert main(["speak", "Hello world.", "-o", str(tmp_path / "x.wav"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "Traceback" not in err


def test_bench_reports_every_stage(small_ckpt, tmp_path):
    import json

    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--checkpoint", str(small_ckpt), "--tokens", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text().splitlines()[-1])
    for key in ("conditioning_s", "t3_prefill_s", "t3_tokens", "t3_ms_per_token", "flow_encoder_s", "cfm_steps",
                "cfm_s", "hift_s", "total_s", "audio_s", "rtf", "peak_rss_mb"):
        assert key in result, key
    # the default preset (fast) solves the flow with 8 estimator calls (Adams-Bashforth 2: one per step)
    assert result["t3_tokens"] == 4 and result["cfm_steps"] == 8 and result["peak_rss_mb"] > 0
    assert result["machine"]["cpu_count"] >= 1


def test_bench_compare_upstream_needs_the_oracle_venv(small_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTER_CHATTERBOX_ORACLE_VENV", str(tmp_path / "no-venv"))
    monkeypatch.setattr("faster_chatterbox.bench._spawn", lambda *a: pytest.fail("ran a side before failing"))
    assert main(["bench", "--checkpoint", str(small_ckpt), "--tokens", "4", "--compare-upstream"]) == 2
    err = capsys.readouterr().err
    assert "no-venv/bin/python does not exist" in err and "install-oracle.sh" in err and len(err.splitlines()) == 1


def test_bench_jobs_scenario_runs_requests_one_by_one_and_at_once(small_ckpt, tmp_path, capsys):
    import json

    from faster_chatterbox.bench import job_texts

    texts = job_texts(3, 60)
    assert len(texts) == 3 and len(set(texts)) == 3 and all(0 < len(t) <= 60 for t in texts)
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--checkpoint", str(small_ckpt), "--scenario", "jobs", "--jobs", "3", "--chars", "60",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["job"] == {"scenario": "jobs", "jobs": 3, "chars": 60, "preset": "fast", "decoder": "cfm",
                             "checkpoint": str(small_ckpt)}
    assert result["jobs"] == 3 and result["chars"] == sum(map(len, texts)) and result["tokens"] > 0
    assert 0 < result["latency_p50_s"] <= result["latency_p95_s"] <= result["latency_max_s"] == result["concurrent_s"]
    assert result["throughput"] == pytest.approx(result["audio_s"] / result["concurrent_s"])
    assert result["sequential_s"] > 0 and result["peak_rss_mb"] > 0
    assert main(["bench", "--checkpoint", str(small_ckpt), "--scenario", "jobs", "--jobs", "0"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


def test_gpu_utilisation_sampler_reads_nvidia_smi_lines():
    from faster_chatterbox.bench import GpuUtilisation

    with GpuUtilisation(command=["sh", "-c", "echo 50; echo '[N/A]'; echo 70"]) as gpu:
        gpu._proc.wait()  # all printed before the sampler stops (nvidia-smi -lms runs until stopped)
    assert gpu.command[0] == "sh" and gpu.samples == [50.0, 70.0]
    assert gpu.summary() == {"gpu_util_mean_pct": 60.0, "gpu_util_max_pct": 70.0, "gpu_util_samples": 2}
    with GpuUtilisation(command=["no-such-nvidia-smi-here"]) as missing:
        pass
    assert missing.summary() == {}
    assert GpuUtilisation("cuda:1").command[-4:] == ["-i", "1", "-lms", "200"]
