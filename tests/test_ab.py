"""The A/B runner: settings, intervals, verdicts, and an end-to-end run on a small random checkpoint."""

import json

import numpy as np
import pytest

from faster_chatterbox.cli import EXIT_USAGE
from faster_chatterbox.quality import ab
from faster_chatterbox.quality.ab import METRICS, Setting, bootstrap_ci, run_ab, verdict

METRIC = {m.name: m for m in METRICS}


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from faster_chatterbox.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "small", seed=0, small=True)


def test_setting_parse(tmp_path):
    assert Setting.parse("exact") == Setting("exact", "exact", {})
    path = tmp_path / "steps4.json"
    path.write_text(json.dumps({"preset": "exact", "generate": {"n_timesteps": 4, "temperature": 0.7}}))
    assert Setting.parse(str(path)) == Setting("steps4", "exact", {"n_timesteps": 4, "temperature": 0.7})
    with pytest.raises(ValueError, match="neither a preset"):
        Setting.parse("turbo")
    path.write_text(json.dumps({"preset": "exact", "generate": {"seed": 3}}))
    with pytest.raises(ValueError, match="not allowed"):
        Setting.parse(str(path))
    path.write_text(json.dumps({"preset": "nope"}))
    with pytest.raises(ValueError, match="unknown preset"):
        Setting.parse(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        Setting.parse(str(path))


def test_bootstrap_and_verdicts():
    mean, low, high = bootstrap_ci([1.0, 2.0, 3.0, np.nan, 4.0])
    assert mean == 2.5 and 1.0 <= low < mean < high <= 4.0
    assert bootstrap_ci([np.nan]) is None
    assert bootstrap_ci([0.0] * 5) == (0.0, 0.0, 0.0)
    sim, clicks, dur = METRIC["sim_campplus"], METRIC["clicks"], METRIC["duration_per_char"]
    assert verdict(sim, -0.01, 0.02) == "same"
    assert verdict(sim, -2e-4, -4e-5) == "same"  # excludes 0 but lies within the 0.01 equivalence margin
    assert verdict(sim, 0.01, 0.02) == "better" and verdict(clicks, 0.5, 2.0) == "worse"
    assert verdict(clicks, -2.0, -0.5) == "better" and verdict(dur, 0.01, 0.02) == "differs"
    assert verdict(METRIC["mcd"], 0.1, 0.4) == "same" and verdict(METRIC["mcd"], 0.3, 0.6) == "worse"
    assert verdict(METRIC["si_sdr"], 35.0, 40.0) == "same" and verdict(METRIC["si_sdr"], 20.0, 40.0) == "worse"


def test_aggregate_detects_a_difference():
    utts = [dict(a={m.name: 0.0 for m in METRICS}, b={m.name: 0.0 for m in METRICS}, paired=None)
            for _ in range(8)]
    for i, u in enumerate(utts):
        u["b"]["clicks"] = 2.0 + i % 2  # B always clicks more
        u["b"]["sim_ve"] = 0.1 * (-1) ** i  # noise around A
    agg = ab.aggregate(utts)
    assert agg["clicks"]["verdict"] == "worse" and agg["clicks"]["mean"] == 2.5
    assert agg["sim_ve"]["verdict"] == "same"
    assert "mel_l1" not in agg  # no utterance had identical tokens


def test_identical_settings_give_same_verdicts(small_checkpoint, tmp_path, single_thread):
    out = tmp_path / "ab"
    report = run_ab("exact", "exact", ["Hello there.", "A second sentence."], seeds=2,
                    checkpoint=small_checkpoint, device="cpu", max_new_tokens=12, out_dir=out)
    assert report["mode"] == "deterministic" and report["same_tokens"] == "4/4"
    assert report["random_weights"]
    verdicts = {name: agg["verdict"] for name, agg in report["aggregate"].items()}
    assert {"mel_l1", "mcd", "si_sdr", "sim_ve", "sim_campplus", "clicks", "duration_per_char"} <= set(verdicts)
    assert set(verdicts.values()) == {"same"}, verdicts
    assert report["aggregate"]["mel_l1"]["mean"] == 0.0 and report["aggregate"]["mel_l1"]["n"] == 4
    assert "wer" in report["skipped"]

    saved = json.loads((out / "ab.json").read_text())  # strict JSON (no NaN)
    assert saved["aggregate"].keys() == report["aggregate"].keys() and len(saved["utterances"]) == 4
    page = (out / "report.html").read_text()
    assert "Random weights" in page and "mel_l1" in page and page.count("<audio") == 8
    assert all((out / u["audio"][0]).is_file() for u in saved["utterances"])
    pytest.importorskip("matplotlib")
    assert (out / "outputs.png").stat().st_size > 0 and (out / "paired.png").stat().st_size > 0


def test_same_tokens_with_different_noise_streams_are_not_paired(monkeypatch, tmp_path):
    """exact draws decoder noise from the global RNG, the batched presets from each chunk's stream: even with
    identical tokens their waveforms differ by the noise, so the pair is compared as outputs only."""
    assert ab.noise_stream(ab.Setting("exact", "exact")) == "global"
    assert ab.noise_stream(ab.Setting("fast", "fast")) == "chunk"
    assert ab.noise_stream(ab.Setting("f", "fast", {"fast_inference": False})) == "global"
    rng = np.random.default_rng(0)
    tokens = np.arange(10)

    def fake_outputs(a, b, jobs, *args):
        outs = [[ab.Output(rng.standard_normal(24000).astype(np.float32), tokens, 1.0, 0.0, 0) for _ in jobs]
                for _ in (a, b)]
        scorer = type("Scorer", (), {"resemblyzer": None, "similarities": lambda self, wav, sr: {}})()
        return outs[0], outs[1], scorer, True

    monkeypatch.setattr(ab, "synthesize_both", fake_outputs)
    monkeypatch.setattr(ab, "output_metrics", lambda *args: {m.name: 0.0 for m in METRICS})
    monkeypatch.setattr(ab, "paired_metrics", lambda *args: {m.name: 0.0 for m in METRICS if m.kind == "paired"})
    monkeypatch.setattr("faster_chatterbox.quality.report.write_html", lambda report, out_dir: None)
    mixed = ab.run_ab("exact", "fast", ["Hello."], seeds=2, checkpoint=tmp_path, device="cpu", out_dir=tmp_path / "x")
    assert mixed["same_tokens"] == "2/2" and mixed["mode"] == "statistical" and "paired" in mixed["skipped"]
    assert all(u["paired"] is None for u in mixed["utterances"])
    same = ab.run_ab("fast", "fast", ["Hello."], seeds=2, checkpoint=tmp_path, device="cpu", out_dir=tmp_path / "y")
    assert same["mode"] == "deterministic" and "paired" not in same["skipped"]


def test_cli_errors_exit_2(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    ab.add_ab_command(parser.add_subparsers(dest="command"))
    texts = tmp_path / "texts.txt"
    texts.write_text("# only a comment\n\n")
    args = parser.parse_args(["ab", "--a", "exact", "--b", "exact", "--texts", str(texts), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="no texts"):
        args.func(args)
    texts.write_text("Hello.\n")
    args = parser.parse_args(["ab", "--a", "exact", "--b", "bogus", "--texts", str(texts), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="bogus"):
        args.func(args)
    assert EXIT_USAGE == 2  # cli.main turns these ValueErrors into exit status 2
