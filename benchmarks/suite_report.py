"""The benchmark suite as a report: tables and plots from the JSON lines `faster-chatterbox bench --json` appends.

    python benchmarks/suite_report.py benchmarks/results.jsonl --out benchmarks/suite

Writes OUT/suite.md (tables of the stages, text and jobs scenarios) and, with matplotlib (the `bench` extra),
OUT/cost_per_char.png (generate seconds per 1,000 characters against text length) and OUT/stages.png (time per
stage, ours beside upstream).

A run's job is its scenario, preset, decoder, checkpoint (directory name), --tokens, --chars or --jobs, on a machine
setup (device, GPU, torch threads); only the latest run of each job is reported, older ones are counted.
Lines written before the `text` scenario existed have no job.scenario (read as `stages`) and no job.decoder
(read as `cfm`, the only decoder then). Speed-ups are upstream / ours from the same line, never across lines.
Output is sorted by job, so the same file always gives the same report.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from faster_chatterbox.quality.report import pyplot

# scenario -> result keys a line must hold for ours and, when present, for upstream
REQUIRED = {
    "stages": ("conditioning_s", "t3_prefill_s", "t3_tokens", "t3_ms_per_token", "flow_encoder_s", "cfm_s",
               "hift_s", "generate_s", "total_s", "audio_s", "rtf", "peak_rss_mb"),
    "text": ("chars", "chunks", "tokens", "t3_s", "s3gen_s", "generate_s", "audio_s", "rtf", "peak_rss_mb"),
    "jobs": ("jobs", "chars", "tokens", "audio_s", "sequential_s", "generate_s", "peak_rss_mb"),
}
# stacked segments of the stage plot: (label, seconds of one side's results)
STAGE_SEGMENTS = {
    "stages": (
        ("conditioning", lambda r: r["conditioning_s"]),
        ("T3 prefill", lambda r: r["t3_prefill_s"]),
        ("T3 decode", lambda r: r["t3_ms_per_token"] * r["t3_tokens"] / 1000),
        ("flow encoder", lambda r: r["flow_encoder_s"]),
        ("CFM", lambda r: r["cfm_s"]),
        ("HiFT", lambda r: r["hift_s"]),
    ),
    "text": (("T3", lambda r: r["t3_s"]), ("S3Gen", lambda r: r["s3gen_s"])),
}
TOTAL = {"stages": "total_s", "text": "generate_s"}  # the bar's full height; what the segments miss is "other"


@dataclass(frozen=True)
class Run:
    """One line of the results file."""

    line: int
    scenario: str  # "stages" | "text" | "jobs"
    preset: str
    decoder: str
    checkpoint: str  # the checkpoint directory's name
    size: int  # stages: --tokens; text: --chars; jobs: --jobs
    device: str
    gpu: str  # "" off CUDA
    threads: int
    date: datetime
    ours: dict
    upstream: dict | None
    chars_per_job: int = 0  # jobs: --chars

    @property
    def job(self) -> tuple:
        """What was run where; runs of the same job supersede each other."""
        return (self.scenario, self.preset, self.decoder, self.checkpoint, self.device, self.gpu, self.threads,
                self.chars_per_job, self.size)

    @property
    def setup(self) -> str:
        """Preset, decoder, checkpoint and machine in a few words: a plot label."""
        gpu = f" {self.gpu}" if self.gpu else ""
        return f"{self.preset}/{self.decoder}, {self.checkpoint}, {self.device}{gpu}, {self.threads} thr"

    def speedup(self, key: str) -> float | None:
        """Upstream's value over ours for `key` (a speed-up for times), from this run; None without upstream."""
        if self.upstream is None or not self.ours[key] > 0:
            return None
        return self.upstream[key] / self.ours[key]


def _results(where: str, scenario: str, side: object) -> dict:
    if not isinstance(side, dict):
        raise ValueError(f"{where}: expected an object of results, got {type(side).__name__}")
    for key in REQUIRED[scenario]:
        value = side.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: a {scenario} run needs a number '{key}', got {value!r}")
    if scenario == "text" and side["chars"] < 1:
        raise ValueError(f"{where}: a text run of {side['chars']} characters")
    return side


def _date(where: str, text: object) -> datetime:
    try:
        date = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'date' is not an ISO date: {text!r}") from None
    return date if date.tzinfo else date.replace(tzinfo=timezone.utc)


def parse_run(record: object, where: str, line: int = 0) -> Run:
    """One decoded JSON line as a Run; ValueError naming `where` and the problem when it is not one."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    job, machine = record.get("job"), record.get("machine")
    if not isinstance(job, dict) or not isinstance(machine, dict):
        raise ValueError(f"{where}: a run needs 'job' and 'machine' objects")
    scenario = job.get("scenario", "stages")
    if scenario not in REQUIRED:
        raise ValueError(f"{where}: unknown scenario {scenario!r} (expected one of {sorted(REQUIRED)})")
    size_key = {"stages": "tokens", "text": "chars", "jobs": "jobs"}[scenario]
    for key, kind in (("preset", str), (size_key, int)) + ((("chars", int),) if scenario == "jobs" else ()):
        if not isinstance(job.get(key), kind):
            raise ValueError(f"{where}: job.{key} is missing or not a {kind.__name__}")
    if not isinstance(machine.get("device"), str) or not isinstance(machine.get("torch_threads"), int):
        raise ValueError(f"{where}: machine needs 'device' and 'torch_threads'")
    upstream = record.get("upstream")
    return Run(
        line=line, scenario=scenario, preset=job["preset"], decoder=str(job.get("decoder", "cfm")),
        checkpoint=Path(str(job.get("checkpoint", "?"))).name, size=job[size_key], device=machine["device"],
        gpu=str(machine.get("gpu", "")), threads=machine["torch_threads"], date=_date(where, record.get("date")),
        ours=_results(where, scenario, record),
        upstream=None if upstream is None else _results(f"{where} (upstream)", scenario, upstream),
        chars_per_job=job["chars"] if scenario == "jobs" else 0,
    )


def load_runs(path: str | Path) -> list[Run]:
    """Every run in a results file (blank lines skipped); ValueError naming the line of a garbled one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"results file {path} not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"results file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    runs = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        runs.append(parse_run(record, where, number))
    if not runs:
        raise ValueError(f"results file {path} holds no runs")
    return runs


def latest_runs(runs: list[Run]) -> list[Run]:
    """The latest run of each job (the later line on equal dates), sorted by job."""
    latest: dict[tuple, Run] = {}
    for run in runs:
        kept = latest.get(run.job)
        if kept is None or (run.date, run.line) > (kept.date, kept.line):
            latest[run.job] = run
    return [latest[job] for job in sorted(latest)]


def _num(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}{suffix}"


def per_1k_chars(res: dict) -> float:
    """Generate seconds per 1,000 characters of a text run's side."""
    return 1000 * res["generate_s"] / res["chars"]


def _machine(run: Run) -> str:
    gpu = f" ({run.gpu})" if run.gpu else ""
    return f"{run.device}{gpu}, {run.threads} thr"


def _when(run: Run) -> str:
    return run.date.strftime("%Y-%m-%d %H:%M")


STAGE_COLUMNS = (  # (header, key, digits)
    ("conditioning s", "conditioning_s", 2), ("T3 prefill s", "t3_prefill_s", 2),
    ("T3 ms/token", "t3_ms_per_token", 1), ("flow encoder s", "flow_encoder_s", 2), ("CFM s", "cfm_s", 2),
    ("HiFT s", "hift_s", 2), ("generate s", "generate_s", 2), ("total s", "total_s", 2),
)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(head: list[str], text_columns: int) -> list[str]:
    return [_row(head), "|" + "---|" * text_columns + "---:|" * (len(head) - text_columns)]


def stages_table(runs: list[Run]) -> list[str]:
    """Markdown rows per run: ours, then upstream and upstream / ours (speed-ups) when the run has them."""
    head = ["preset", "decoder", "checkpoint", "machine", "date", "side", "tokens"]
    lines = _header(head + [h for h, _, _ in STAGE_COLUMNS] + ["audio s", "RTF", "peak RSS MB"], 6)
    for run in runs:
        label = [run.preset, run.decoder, run.checkpoint, _machine(run), _when(run)]
        for side, res in [("ours", run.ours)] + ([("upstream", run.upstream)] if run.upstream else []):
            lines.append(_row(label + [side, str(res["t3_tokens"])] + [_num(res[k], d) for _, k, d in STAGE_COLUMNS]
                              + [_num(res["audio_s"]), _num(res["rtf"]), _num(res["peak_rss_mb"], 0)]))
        if run.upstream:
            ratios = [_num(run.speedup(k), 2, "x") for k in [k for _, k, _ in STAGE_COLUMNS] + ["rtf", "peak_rss_mb"]]
            lines.append(_row(label + ["up / ours", ""] + ratios[:-2] + [""] + ratios[-2:]))
    return lines


def text_table(runs: list[Run]) -> list[str]:
    """Markdown rows, one per run: ours, with upstream's generate time and the speed-up when present."""
    lines = _header(["preset", "decoder", "checkpoint", "machine", "date", "chars", "chunks", "audio s",
                     "generate s", "RTF", "s per 1k chars", "TTFA s", "peak RSS MB", "upstream generate s",
                     "speed-up"], 5)
    for run in runs:
        r = run.ours
        lines.append(_row([run.preset, run.decoder, run.checkpoint, _machine(run), _when(run), str(r["chars"]),
                           str(r["chunks"]), _num(r["audio_s"]), _num(r["generate_s"]), _num(r["rtf"]),
                           _num(per_1k_chars(r)), _num(r.get("ttfa_s")),
                           _num(r["peak_rss_mb"], 0), _num(run.upstream["generate_s"] if run.upstream else None),
                           _num(run.speedup("generate_s"), 2, "x")]))
    return lines


def jobs_table(runs: list[Run]) -> list[str]:
    """Markdown rows, one per run: ours one after another and all at once, upstream one after another."""
    lines = _header(["preset", "decoder", "checkpoint", "machine", "date", "jobs", "chars each", "tokens",
                     "audio s", "one by one s", "at once s", "at once / one by one", "latency p50 s",
                     "latency p95 s", "audio s per s", "peak RSS MB", "upstream one by one s", "speed-up"], 5)
    for run in runs:
        r = run.ours
        gain = r["sequential_s"] / r["generate_s"] if r["generate_s"] > 0 else None
        lines.append(_row([run.preset, run.decoder, run.checkpoint, _machine(run), _when(run), str(r["jobs"]),
                           str(run.chars_per_job), str(r["tokens"]), _num(r["audio_s"]), _num(r["sequential_s"]),
                           _num(r["generate_s"]), _num(gain, 2, "x"), _num(r.get("latency_p50_s")),
                           _num(r.get("latency_p95_s")), _num(r.get("throughput")), _num(r["peak_rss_mb"], 0),
                           _num(run.upstream["generate_s"] if run.upstream else None),
                           _num(run.speedup("generate_s"), 2, "x")]))
    return lines


def render_markdown(runs: list[Run], source: str, plots: list[str] | None) -> str:
    """suite.md: the latest run of each job, stages then text, then the plots (None: matplotlib missing)."""
    latest = latest_runs(runs)
    by = {s: [r for r in latest if r.scenario == s] for s in REQUIRED}
    lines = ["# Benchmark suite", "",
             f"From `{source}`: {len(runs)} runs, the latest of each of {len(latest)} jobs "
             f"({len(runs) - len(latest)} older runs of the same jobs left out). Machine: device (GPU), "
             "torch intra-op threads. Speed-ups are upstream / ours within one run; the random-weight checkpoint "
             "measures speed only.", "",
             "## Stages: one sentence, stage by stage", "",
             "`faster-chatterbox bench --tokens N [--compare-upstream]`: conditioning is `prepare_conditionals` on "
             "a 10 s clip, generate covers T3 (prefill + N decode steps), the flow encoder, CFM and HiFT.", ""]
    lines += stages_table(by["stages"]) if by["stages"] else ["(no runs)"]
    lines += ["", "## Text: a long text whole", "",
              "`faster-chatterbox bench --scenario text --chars N [--stream] [--compare-upstream]`: the corpus "
              "chapter's first N characters; upstream speaks the same chunks one `generate` call each.", ""]
    lines += text_table(by["text"]) if by["text"] else ["(no runs)"]
    lines += ["", "## Jobs: independent requests, one after another and all at once", "",
              "`faster-chatterbox bench --scenario jobs --jobs N --chars C [--compare-upstream]`: N pieces of the "
              "chapter of at most C characters each; at once = N threads at the same time, their T3 decodes "
              "sharing the scheduler's batch; latency from the common start; speed-up = upstream one by one / "
              "ours at once.", ""]
    lines += jobs_table(by["jobs"]) if by["jobs"] else ["(no runs)"]
    lines += ["", "## Plots", ""]
    if plots is None:
        lines.append("matplotlib is not installed (`pip install faster-chatterbox[bench]`): no plots.")
    else:
        lines += [f"![{name}]({name})" for name in plots] or ["(nothing to plot)"]
    return "\n".join(lines) + "\n"


def plot_cost_per_char(plt, runs: list[Run], path: Path) -> bool:
    """Generate seconds per 1,000 characters against text length, one line per setup; False without text runs."""
    text = [r for r in latest_runs(runs) if r.scenario == "text"]
    if not text:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, setup in enumerate(sorted({r.job[1:-1] for r in text})):
        group = [r for r in text if r.job[1:-1] == setup]
        color = f"C{i % 10}"
        ax.plot([r.ours["chars"] for r in group], [per_1k_chars(r.ours) for r in group],
                "o-", color=color, label=group[0].setup)
        up = [r for r in group if r.upstream]
        if up:
            ax.plot([r.upstream["chars"] for r in up], [per_1k_chars(r.upstream) for r in up],
                    "x", ms=9, mew=2, ls="none", color=color, label=f"upstream ({group[0].setup})")
    ax.set(xscale="log", xlabel="text length (characters)", ylabel="generate s per 1,000 characters",
           title="Cost per character against text length (flat = linear cost)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _bar(ax, x: float, res: dict, scenario: str, scale: float, upstream: bool, legend: bool) -> None:
    """One stacked bar: the scenario's stages, then "other" (the rest of the total), times `scale`."""
    parts = [(name, fn(res)) for name, fn in STAGE_SEGMENTS[scenario]]
    parts.append(("other", max(0.0, res[TOTAL[scenario]] - sum(seconds for _, seconds in parts))))
    bottom = 0.0
    for i, (name, seconds) in enumerate(parts):
        ax.bar(x, seconds * scale, bottom=bottom, color=f"C{i}", label=name if legend else None,
               hatch="//" if upstream else None, edgecolor="white")
        bottom += seconds * scale
    ax.text(x, bottom, "upstream" if upstream else "ours", ha="center", va="bottom", fontsize=7)


def _stacked_bars(ax, runs: list[Run], scenario: str) -> None:
    """Ours and upstream side by side per run, stacked by stage; text runs per 1,000 characters."""
    ticks, x = [], 0.0
    for run in runs:
        scale = 1000 / run.ours["chars"] if scenario == "text" else 1.0
        _bar(ax, x, run.ours, scenario, scale, upstream=False, legend=not ticks)
        if run.upstream:
            _bar(ax, x + 1, run.upstream, scenario, scale, upstream=True, legend=False)
        size = f"{run.size} chars" if scenario == "text" else f"{run.size} tokens"
        ticks.append((x + (0.5 if run.upstream else 0), f"{run.setup}\n{size}"))
        x += 2.5 if run.upstream else 1.5
    ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=7)
    what = "long text: T3 vs S3Gen" if scenario == "text" else "one sentence: conditioning + generate"
    ax.set(ylabel="s per 1,000 characters" if scenario == "text" else "s", title=f"{what} (hatched: upstream)")
    ax.margins(y=0.08)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_stages(plt, runs: list[Run], path: Path) -> bool:
    """Time per stage, ours beside upstream: one panel per scenario with runs; False without any."""
    latest = latest_runs(runs)
    panels = [(s, [r for r in latest if r.scenario == s]) for s in STAGE_SEGMENTS]
    panels = [(s, group) for s, group in panels if group]
    if not panels:
        return False
    bars = [len(group) + sum(r.upstream is not None for r in group) for _, group in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(2 + 2 * len(panels) + 1.1 * sum(bars), 5), squeeze=False,
                             gridspec_kw={"width_ratios": [b + 1 for b in bars]})
    for ax, (scenario, group) in zip(axes[0], panels):
        _stacked_bars(ax, group, scenario)
    fig.suptitle("Time per stage")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(results: str | Path, out_dir: str | Path) -> Path:
    """OUT/suite.md and, with matplotlib, the plots beside it; returns the markdown's path."""
    runs = load_runs(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    plots = None
    if plt is not None:
        plots = [name for name, fn in (("cost_per_char.png", plot_cost_per_char), ("stages.png", plot_stages))
                 if fn(plt, runs, out_dir / name)]
    md = out_dir / "suite.md"
    md.write_text(render_markdown(runs, Path(results).name, plots), encoding="utf-8")
    return md


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="JSON lines from `faster-chatterbox bench --json`")
    parser.add_argument("--out", default="benchmarks/suite", help="output directory (default: benchmarks/suite)")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {write_report(args.results, args.out)}")
    except ValueError as exc:  # a missing or garbled results file: one line, status 2
        parser.error(str(exc))


if __name__ == "__main__":
    main()
