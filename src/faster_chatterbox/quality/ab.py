"""A/B comparison of two engine settings on the same texts, voice and seeds.

    faster-chatterbox ab --a exact --b fast --texts corpus/short.txt --voice ref.wav --seeds 3 --out ab/

A setting is a preset name or a JSON file {"preset": NAME, "generate": {keyword arguments of generate}}.
Every (text, seed) is spoken by A and by B. Two kinds of metrics:
  paired   when A and B produced the same speech tokens and draw decoder noise the same way (both exact,
           or both batched presets: `noise_stream`), so that only the decoder, vocoder or precision differ
           and the outputs are renderings of the same utterance: B's distance from A (mel L1, MCD, SI-SDR,
           PESQ, STOI, F0 RMSE, voicing agreement). Verdict: "same" when the whole 95% interval of the mean
           lies within the metric's tolerance, else "worse" (B departs from A, the reference, by more).
  output   a property of every output (speaker similarity to the voice, duration per character, clicks,
           loudness, word error rate): the per-(text, seed) difference B - A. Verdict: "same" when the
           95% interval of the mean difference holds 0, else "better" / "worse" by the metric's direction,
           or "differs" for metrics without one (duration, loudness).
Intervals are percentile bootstraps of the mean over utterances (deterministic: a fixed seed).
Writes OUT/ab.json, OUT/report.html with PNG plots (matplotlib, the `bench` extra), OUT/audio/*.wav.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..audio.io import load_audio, write_audio
from ..audio.joins import measure_joins
from . import metrics as M
from .models import SpeakerScorer, load_transcriber

log = logging.getLogger(__name__)

SET_BY_AB = ("self", "text", "audio_prompt_path", "seed", "max_new_tokens")  # generate() args the run fixes
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    kind: str  # "paired" (B's distance from A, same tokens) or "output" (B - A of a per-output value)
    better: str | None  # "higher", "lower", or None when neither direction is better
    # paired: the largest departure from A still called "same"; output: the equivalence margin, a B - A
    # interval inside [-tolerance, tolerance] is "same" even when it excludes 0 (a real but negligible shift)
    tolerance: float | None = None


METRICS = (
    Metric("mel_l1", "ln-mel", "paired", "lower", 0.05),
    Metric("mcd", "dB", "paired", "lower", 0.5),
    Metric("si_sdr", "dB", "paired", "higher", 30.0),
    Metric("pesq", "MOS", "paired", "higher", 4.2),
    Metric("stoi", "", "paired", "higher", 0.98),
    Metric("f0_rmse", "cents", "paired", "lower", 10.0),
    Metric("voicing_agreement", "", "paired", "higher", 0.97),
    Metric("sim_ve", "cos", "output", "higher", 0.01),
    Metric("sim_campplus", "cos", "output", "higher", 0.01),
    Metric("sim_resemblyzer", "cos", "output", "higher", 0.01),
    Metric("duration_per_char", "s", "output", None, 0.002),  # ~3% of 0.06 s per character
    Metric("clicks", "count", "output", "lower"),
    Metric("join_clicks", "count", "output", "lower"),
    Metric("failed_chunks", "", "output", "lower", 0.02),
    Metric("loudness", "LUFS", "output", None, 0.5),
    Metric("wer", "", "output", "lower", 0.01),
)


@dataclass(frozen=True)
class Setting:
    """One side of an A/B: a preset and keyword arguments for ChatterboxTTS.generate."""

    name: str
    preset: str
    generate: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Setting:
        """A preset name, or the path of a JSON file {"preset": NAME, "generate": {...}}."""
        from ..settings import PRESET_NAMES
        from ..tts import ChatterboxTTS

        if spec in PRESET_NAMES:
            return cls(spec, spec)
        path = Path(spec)
        if not path.suffix == ".json":
            raise ValueError(f"setting {spec!r} is neither a preset ({', '.join(PRESET_NAMES)}) nor a .json file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read setting file {path}: {exc}") from exc
        if not isinstance(data, dict) or set(data) - {"preset", "generate"}:
            raise ValueError(f"{path}: expected an object with the keys 'preset' and 'generate'")
        preset, kwargs = data.get("preset", "exact"), data.get("generate", {})
        if preset not in PRESET_NAMES:
            raise ValueError(f"{path}: unknown preset {preset!r}: choose one of {', '.join(PRESET_NAMES)}")
        if not isinstance(kwargs, dict):
            raise ValueError(f"{path}: 'generate' must be an object of keyword arguments")
        allowed = set(inspect.signature(ChatterboxTTS.generate).parameters) - set(SET_BY_AB)
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ValueError(f"{path}: generate() arguments {unknown} are not allowed here; "
                             f"choose from {sorted(allowed)}")
        return cls(path.stem, preset, kwargs)


@dataclass
class Output:
    wav: np.ndarray  # (N,) float32 at 24 kHz
    tokens: np.ndarray | None  # speech tokens given to the decoder, all chunks; None when there were none
    seconds: float  # wall time of the generate call
    failed_chunks: float  # fraction of chunks the pipeline's detectors flagged (retried or kept)
    join_clicks: int  # chunk joins that measure as clicks (audio.joins.measure_joins)


def read_texts(path: str | Path) -> list[str]:
    """One text per line of a UTF-8 file; blank lines and lines starting with '#' are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read texts file {path}: {exc}") from exc
    texts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not texts:
        raise ValueError(f"texts file {path} has no texts (one per line)")
    return texts


# ---- synthesis ---------------------------------------------------------------------------
def _speak(tts, text: str, seed: int, max_new_tokens: int, kwargs: dict) -> Output:
    """One synthesis (generate's work, with its per-chunk metadata)."""
    start = time.perf_counter()
    result = tts.synthesize(text, seed=seed, max_new_tokens=max_new_tokens, **kwargs)
    seconds = time.perf_counter() - start
    tokens = [c.tokens.cpu().numpy() for c in result.chunks if len(c.tokens)]
    failed = sum(bool(c.failures) for c in result.chunks) / len(result.chunks)
    clicks = measure_joins(result.audio, result.sample_rate, result.joins).clicks if result.joins else 0
    return Output(result.audio, np.concatenate(tokens) if tokens else None, seconds, failed, clicks)


NOISE_SOURCES = {"global": "the global RNG", "chunk": "each chunk's own generator"}


def noise_stream(setting: Setting) -> str:
    """Where a setting draws its decoder noise: "global" (the exact preset, or fast_inference=False: the global
    RNG, as upstream) or "chunk" (batched presets: each chunk's own generator). Outputs of two settings with
    the same tokens are comparable sample by sample only when they draw noise the same way."""
    from ..settings import call_settings, engine_settings

    fast_inference = setting.generate.get("fast_inference", True)
    seeded = call_settings(engine_settings(setting.preset, "cpu"), fast_inference=fast_inference).seeded_streams
    return "chunk" if seeded else "global"


def _load(setting: Setting, checkpoint, device: str):
    from ..tts import ChatterboxTTS

    if checkpoint is None:
        return ChatterboxTTS.from_pretrained(device=device, preset=setting.preset, watermark=False)
    return ChatterboxTTS.from_local(checkpoint, device=device, preset=setting.preset, watermark=False)


def synthesize_both(a: Setting, b: Setting, jobs: list[tuple[str, int]], voice, checkpoint, device: str,
                    max_new_tokens: int) -> tuple[list[Output], list[Output], SpeakerScorer, bool]:
    """Speak every (text, seed) job with A, then with B (one model in memory at a time, reused when both
    use the same preset). Returns A's and B's outputs, a scorer built from the first model, random_weights."""
    outputs, tts, scorer = [], None, None
    voice_wav = load_audio(voice, 24000) if voice is not None else None
    for side in (a, b):
        if tts is None or side.preset != a.preset:
            if tts is not None:
                tts.close()  # free the previous model first (its scheduler thread would keep it alive)
                tts = None
            tts = _load(side, checkpoint, device)
            if voice is not None:
                tts.prepare_conditionals(voice)
        if scorer is None:
            scorer = SpeakerScorer(tts, voice_wav, 24000)
        outputs.append([_speak(tts, text, seed, max_new_tokens, side.generate) for text, seed in jobs])
    return outputs[0], outputs[1], scorer, bool(tts.random_weights)


# ---- metrics -----------------------------------------------------------------------------
def _try(skipped: dict, names: Sequence[str], fn):
    """fn() as a tuple of values for `names`; NaNs and a note in `skipped` when its package is missing."""
    if any(n in skipped for n in names):
        return (float("nan"),) * len(names)
    try:
        value = fn()
    except M.MissingDependency as exc:
        skipped.update({n: str(exc) for n in names})
        return (float("nan"),) * len(names)
    return value if isinstance(value, tuple) else (value,)


def paired_metrics(ref: np.ndarray, deg: np.ndarray, sr: int, skipped: dict) -> dict[str, float]:
    """B's distances from A for two renderings of the same tokens."""
    out = {"mel_l1": M.mel_l1(ref, deg, sr), "mcd": M.mel_cepstral_distortion(ref, deg, sr),
           "si_sdr": M.si_sdr(ref, deg) if len(ref) == len(deg) and np.any(ref) else float("nan")}
    out["f0_rmse"], out["voicing_agreement"] = M.f0_rmse_cents(ref, deg, sr)
    (out["pesq"],) = _try(skipped, ["pesq"], lambda: M.pesq_score(ref, deg, sr))
    (out["stoi"],) = _try(skipped, ["stoi"], lambda: M.stoi_score(ref, deg, sr))
    return out


def output_metrics(output: Output, sr: int, text: str, scorer: SpeakerScorer, transcribe, skipped: dict) -> dict:
    """Per-output values (NaN for an empty output)."""
    names = [m.name for m in METRICS if m.kind == "output"]
    wav = output.wav
    if wav.size == 0:
        return {n: float("nan") for n in names}
    sims = scorer.similarity(wav, sr)
    out = {f"sim_{k}": sims.get(k, float("nan")) for k in ("ve", "campplus", "resemblyzer")}
    out["duration_per_char"] = M.duration_per_char(wav, sr, text)
    out["clicks"] = float(M.click_count(wav, sr))
    out["join_clicks"] = float(output.join_clicks)
    out["failed_chunks"] = output.failed_chunks
    (out["loudness"],) = _try(skipped, ["loudness"], lambda: M.loudness_lufs(wav, sr))
    out["wer"] = M.word_error_rate(text, transcribe(wav, sr)) if transcribe else float("nan")
    return out


def bootstrap_ci(values, n_resamples: int = 2000, confidence: float = CONFIDENCE, seed: int = 0):
    """(mean, low, high): percentile-bootstrap interval of the mean of the finite values; None if none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, v.size, (n_resamples, v.size))
    means = v[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(v.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def verdict(metric: Metric, low: float, high: float) -> str:
    """better / same / worse (or differs) from the interval of a paired distance or of a mean difference."""
    if metric.kind == "paired":
        within = high <= metric.tolerance if metric.better == "lower" else low >= metric.tolerance
        return "same" if within else "worse"
    margin = metric.tolerance or 0.0
    if low <= 0.0 <= high or -margin <= low <= high <= margin:
        return "same"
    if metric.better is None:
        return "differs"
    return "better" if (low > 0) == (metric.better == "higher") else "worse"


def aggregate(utterances: list[dict], n_resamples: int = 2000) -> dict:
    """Per metric: mean and interval (paired: of B's distance; output: of B - A), A and B means, verdict."""
    result = {}
    for metric in METRICS:
        if metric.kind == "paired":
            values = [u["paired"][metric.name] for u in utterances if u["paired"]]
            a_mean = b_mean = None
        else:
            a = np.array([u["a"][metric.name] for u in utterances])
            b = np.array([u["b"][metric.name] for u in utterances])
            values = b - a
            a_mean, b_mean = (float(np.nanmean(x)) if np.isfinite(x).any() else None for x in (a, b))
        ci = bootstrap_ci(values, n_resamples)
        if ci is None:
            continue
        mean, low, high = ci
        result[metric.name] = dict(kind=metric.kind, unit=metric.unit, better=metric.better,
                                   tolerance=metric.tolerance, mean=mean, ci=[low, high],
                                   n=int(np.isfinite(np.asarray(values, dtype=float)).sum()),
                                   a_mean=a_mean, b_mean=b_mean, verdict=verdict(metric, low, high))
    return result


# ---- the run -----------------------------------------------------------------------------
def run_ab(a: str | Setting, b: str | Setting, texts: Sequence[str], voice: str | Path | None = None,
           seeds: int | Sequence[int] = 3, checkpoint: str | Path | None = None, device: str = "auto",
           max_new_tokens: int = 1000, out_dir: str | Path = "ab", *, asr_model: str | None = None,
           n_resamples: int = 2000) -> dict:
    """Speak `texts` x `seeds` with settings A and B and compare them; writes OUT/ab.json, OUT/report.html
    (with plots when matplotlib is installed) and OUT/audio/. Returns the report as a dict.

    seeds: a count N (seeds 0..N-1) or explicit seeds. voice: a reference clip (default: the built-in
    voice). asr_model: a whisper model name for word error rates (skipped when unavailable offline).
    """
    a = a if isinstance(a, Setting) else Setting.parse(a)
    b = b if isinstance(b, Setting) else Setting.parse(b)
    if a == b and a.name == b.name:
        b = Setting(f"{b.name} (B)", b.preset, b.generate)
    texts = [t.strip() for t in texts]
    if not texts or not all(texts):
        raise ValueError("texts must be a non-empty list of non-empty strings")
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a positive count or a list of non-negative integers, got {seeds!r}")
    if voice is not None and not Path(voice).is_file():
        raise ValueError(f"voice clip {voice} does not exist")
    out_dir = Path(out_dir)

    skipped: dict[str, str] = {}
    transcribe = None
    if asr_model:
        try:
            transcribe = load_transcriber(asr_model)
        except M.MissingDependency as exc:
            skipped["wer"] = str(exc)
    else:
        skipped["wer"] = "no ASR model given (--whisper NAME)"

    jobs = [(text, seed) for text in texts for seed in seeds]
    outs_a, outs_b, scorer, random_weights = synthesize_both(a, b, jobs, voice, checkpoint, device, max_new_tokens)
    if scorer.resemblyzer is None:
        skipped["sim_resemblyzer"] = ("needs a --voice clip and `pip install resemblyzer`" if voice is None
                                      else "resemblyzer is not installed")
    sr = 24000
    comparable = noise_stream(a) == noise_stream(b)
    if not comparable:
        skipped["paired"] = (f"A draws decoder noise from {NOISE_SOURCES[noise_stream(a)]}, B from "
                             f"{NOISE_SOURCES[noise_stream(b)]}: outputs with the same tokens still differ by "
                             "their noise, so they are compared as outputs only")
    utterances = []
    for i, ((text, seed), oa, ob) in enumerate(zip(jobs, outs_a, outs_b)):
        same_tokens = oa.tokens is not None and ob.tokens is not None and np.array_equal(oa.tokens, ob.tokens)
        names = (f"audio/a_{i:03d}.wav", f"audio/b_{i:03d}.wav")
        for name, out in zip(names, (oa, ob)):
            write_audio(out_dir / name, out.wav, sr)
        utterances.append(dict(
            index=i, text=text, seed=seed, same_tokens=same_tokens, audio=list(names),
            seconds=[oa.seconds, ob.seconds], tokens=[_count(oa.tokens), _count(ob.tokens)],
            a=output_metrics(oa, sr, text, scorer, transcribe, skipped),
            b=output_metrics(ob, sr, text, scorer, transcribe, skipped),
            paired=(paired_metrics(oa.wav, ob.wav, sr, skipped) if comparable and same_tokens and oa.wav.size
                    else None),
        ))
    n_same = sum(u["same_tokens"] for u in utterances)
    n_paired = sum(u["paired"] is not None for u in utterances)
    report = dict(
        a=asdict(a), b=asdict(b), checkpoint=str(checkpoint) if checkpoint else None, device=device,
        voice=str(voice) if voice else None, seeds=seeds, max_new_tokens=max_new_tokens,
        random_weights=random_weights, confidence=CONFIDENCE, n_resamples=n_resamples,
        mode="deterministic" if n_paired == len(utterances) else "statistical" if n_paired == 0 else "mixed",
        same_tokens=f"{n_same}/{len(utterances)}", skipped=skipped, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        aggregate=aggregate(utterances, n_resamples), utterances=utterances,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ab.json").write_text(json.dumps(_finite(report), indent=1))
    from .report import write_html

    write_html(report, out_dir)
    return report


def _count(tokens: np.ndarray | None) -> int | None:
    return None if tokens is None else int(tokens.size)


def _finite(obj):
    """The report with NaN and infinities as null (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ---- command line ------------------------------------------------------------------------
def add_ab_command(subparsers) -> None:
    """Register `faster-chatterbox ab` on an argparse subparsers object."""
    p = subparsers.add_parser("ab", help="compare two settings (presets or JSON parameter files) on the same texts")
    p.add_argument("--a", required=True, metavar="PRESET|PARAMS.json", help="setting A (the reference)")
    p.add_argument("--b", required=True, metavar="PRESET|PARAMS.json", help="setting B")
    p.add_argument("--texts", required=True, metavar="FILE", help="UTF-8 file, one text per line ('#' comments)")
    p.add_argument("--voice", metavar="WAV", help="reference clip (default: the checkpoint's built-in voice)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0..N-1 per text (default 3)")
    p.add_argument("--checkpoint", metavar="DIR", help="local checkpoint directory (default: download)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--max-new-tokens", type=int, default=1000, metavar="N", help="speech-token budget (default 1000)")
    p.add_argument("--whisper", metavar="MODEL", help="whisper model for word error rates, e.g. base.en (optional)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for ab.json, report.html, audio/")
    p.set_defaults(func=run_ab_command)


def run_ab_command(args) -> None:
    """Run `faster-chatterbox ab`; user errors raise ValueError (cli.main prints them and exits 2)."""
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    report = run_ab(args.a, args.b, read_texts(args.texts), voice=args.voice, seeds=args.seeds,
                    checkpoint=args.checkpoint, device=args.device, max_new_tokens=args.max_new_tokens,
                    out_dir=args.out, asr_model=args.whisper)
    print(format_verdicts(report))
    print(f"wrote {Path(args.out) / 'ab.json'} and {Path(args.out) / 'report.html'}")


def format_verdicts(report: dict) -> str:
    """One line per metric: name, estimate with interval, verdict."""
    lines = [f"A = {report['a']['name']}, B = {report['b']['name']}: {report['mode']} comparison "
             f"({report['same_tokens']} utterances with identical tokens)"]
    for name, agg in report["aggregate"].items():
        what = "B vs A" if agg["kind"] == "paired" else "B - A"
        lines.append(f"  {name:18s} {what} {agg['mean']:+.4g} [{agg['ci'][0]:+.4g}, {agg['ci'][1]:+.4g}] "
                     f"{agg['unit']:6s} {agg['verdict']}")
    lines += [f"  {name:18s} skipped: {why}" for name, why in report["skipped"].items()]
    return "\n".join(lines)
