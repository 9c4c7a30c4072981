"""benchmarks/suite_report.py: synthetic `bench --json` lines in, suite.md and plots out."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "suite_report.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("suite_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def machine(device: str = "cpu", threads: int = 2, gpu: str | None = None) -> dict:
    info = {"platform": "Linux", "python": "3.11", "torch": "2.13.0", "cpu_count": 2, "torch_threads": threads,
            "device": device}
    return info | ({"gpu": gpu} if gpu else {})


def stages(scale: float = 1.0) -> dict:
    return {"conditioning_s": 1.0 * scale, "t3_prefill_s": 2.0 * scale, "t3_tokens": 100,
            "t3_ms_per_token": 200.0 * scale, "flow_encoder_s": 0.5 * scale, "cfm_steps": 10, "cfm_s": 20.0 * scale,
            "hift_s": 0.6 * scale, "generate_s": 45.0 * scale, "total_s": 46.0 * scale, "audio_s": 3.0,
            "rtf": 15.0 * scale, "peak_rss_mb": 3000.0 * scale}


def text(chars: int, seconds_per_char: float) -> dict:
    gen = chars * seconds_per_char
    return {"chars": chars, "chunks": max(1, chars // 300), "tokens": chars, "t3_s": 0.6 * gen,
            "s3gen_s": 0.35 * gen, "generate_s": gen, "audio_s": chars / 15, "rtf": gen / (chars / 15),
            "peak_rss_mb": 3500.0}


def line(job: dict, result: dict, date: str, upstream: dict | None = None, **where) -> str:
    record = {"job": job, **result}
    if upstream:
        record["upstream"] = upstream
        record["speedup"] = {"generate_s": upstream["generate_s"] / result["generate_s"]}
    return json.dumps(record | {"machine": machine(**where), "date": date})


CKPT = "/root/.cache/faster-chatterbox/random-full-seed0"
LINES = [
    # an old line: no scenario, no decoder; superseded by the later exact run below
    line({"text_chars": 125, "tokens": 100, "preset": "exact", "checkpoint": CKPT}, stages(1.2),
         "2026-11-24T21:36:20+0000", upstream=stages(1.5)),
    line({"scenario": "stages", "text_chars": 125, "tokens": 100, "preset": "exact", "decoder": "cfm",
          "checkpoint": CKPT}, stages(), "2026-11-25T10:00:00+0000", upstream=stages(2.0)),
    line({"scenario": "stages", "text_chars": 125, "tokens": 100, "preset": "fast", "decoder": "meanflow",
          "checkpoint": CKPT}, stages(0.25), "2026-11-25T11:00:00+0000", device="cuda", threads=1, gpu="NVIDIA H100"),
    *(line({"scenario": "text", "chars": n, "preset": "fast", "decoder": "cfm", "checkpoint": CKPT},
           text(n, 0.02) | {"ttfa_s": 1.5}, "2026-11-25T12:00:00+0000", upstream=text(n, 0.05))
      for n in (12000, 300, 1200)),
    line({"scenario": "text", "chars": 1200, "preset": "exact", "decoder": "cfm", "checkpoint": CKPT},
         text(1200, 0.04), "2026-11-25T13:00:00+0000"),
    "",  # blank lines are skipped
]


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def table_rows(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after `heading`, as lists of cells."""
    section = md.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")][1:]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows]


def test_report_tables(suite, tmp_path):
    md_path = suite.write_report(write(tmp_path, LINES), tmp_path / "suite")
    md = md_path.read_text()
    assert "7 runs, the latest of each of 6 jobs (1 older runs" in md

    stage_rows = table_rows(md, "## Stages")
    # sorted by job: exact before fast; exact has ours, upstream, ratio rows; the old line is superseded
    assert [r[:6] for r in stage_rows] == [
        ["exact", "cfm", "random-full-seed0", "cpu, 2 thr", "2026-11-25 10:00", "ours"],
        ["exact", "cfm", "random-full-seed0", "cpu, 2 thr", "2026-11-25 10:00", "upstream"],
        ["exact", "cfm", "random-full-seed0", "cpu, 2 thr", "2026-11-25 10:00", "up / ours"],
        ["fast", "meanflow", "random-full-seed0", "cuda (NVIDIA H100), 1 thr", "2026-11-25 11:00", "ours"],
    ]
    assert stage_rows[0][7:9] == ["1.00", "2.00"]  # conditioning s, T3 prefill s (not the superseded 1.20)
    assert stage_rows[1][7] == "2.00"
    assert stage_rows[2][7:15] == ["2.00x"] * 8  # upstream at twice every stage time
    assert stage_rows[2][-2:] == ["2.00x", "2.00x"]  # RTF, peak RSS

    text_rows = table_rows(md, "## Text")
    assert [(r[0], r[5]) for r in text_rows] == [("exact", "1200"), ("fast", "300"), ("fast", "1200"),
                                                 ("fast", "12000")]
    exact, fast_300 = text_rows[0], text_rows[1]
    assert exact[10:] == ["40.00", "-", "3500", "-", "-"]  # s per 1k chars, TTFA, RSS, no upstream
    assert fast_300[6:] == ["1", "20.00", "6.00", "0.30", "20.00", "1.50", "3500", "15.00", "2.50x"]


def jobs(n: int, sequential_s: float, at_once_s: float | None) -> dict:
    out = {"jobs": n, "chars": 100 * n, "tokens": 150 * n, "audio_s": 6.0 * n, "sequential_s": sequential_s,
           "generate_s": at_once_s or sequential_s, "peak_rss_mb": 5000.0}
    if at_once_s:
        out |= {"concurrent_s": at_once_s, "latency_p50_s": at_once_s / 2, "latency_p95_s": at_once_s,
                "latency_max_s": at_once_s, "throughput": 6.0 * n / at_once_s}
    return out


def test_jobs_table(suite, tmp_path):
    job = {"scenario": "jobs", "jobs": 8, "chars": 100, "preset": "fast", "decoder": "cfm", "checkpoint": CKPT}
    lines = [line(job, jobs(8, 240.0, 160.0), "2026-11-25T12:00:00+0000", upstream=jobs(8, 480.0, None)),
             line(job | {"chars": 50}, jobs(8, 100.0, 80.0), "2026-11-25T12:30:00+0000")]
    md = suite.write_report(write(tmp_path, lines), tmp_path / "suite").read_text()
    rows = table_rows(md, "## Jobs")
    assert len(rows) == 2  # 50 and 100 characters per job are different jobs
    assert rows[1][5:] == ["8", "100", "1200", "48.00", "240.00", "160.00", "1.50x", "80.00", "160.00", "0.30",
                           "5000", "480.00", "3.00x"]
    assert rows[0][6] == "50" and rows[0][-2:] == ["-", "-"]
    with pytest.raises(ValueError, match="job.chars is missing"):
        suite.load_runs(write(tmp_path, [line({k: v for k, v in job.items() if k != "chars"}, jobs(8, 1.0, 1.0),
                                              "2026-11-25T12:00:00")]))


def test_old_lines_read_as_stages_cfm(suite, tmp_path):
    (run,) = suite.load_runs(write(tmp_path, LINES[:1]))
    assert (run.scenario, run.decoder, run.size, run.upstream is not None) == ("stages", "cfm", 100, True)
    md = suite.render_markdown([run], "results.jsonl", plots=[])
    assert "## Text" in md and "(no runs)" in md and "(nothing to plot)" in md


def test_plots_written(suite, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "suite"
    md = suite.write_report(write(tmp_path, LINES), out).read_text()
    for name in ("cost_per_char.png", "stages.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name})" in md


def test_without_matplotlib(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "pyplot", lambda: None)
    out = tmp_path / "suite"
    md = suite.write_report(write(tmp_path, LINES), out).read_text()
    assert "matplotlib is not installed" in md
    assert sorted(p.name for p in out.iterdir()) == ["suite.md"]


def test_deterministic(suite, tmp_path):
    first = suite.write_report(write(tmp_path, LINES), tmp_path / "a").read_text()
    second = suite.write_report(write(tmp_path, LINES[::-1]), tmp_path / "b").read_text()
    assert first == second  # line order does not matter; the superseded line loses on its date


@pytest.mark.parametrize("lines, problem", [
    ([LINES[1], "{not json"], "line 2: not valid JSON"),
    (["", "[1, 2]"], "line 2: expected a JSON object"),
    ([LINES[1], json.dumps({"job": {"preset": "exact", "tokens": 100}, "date": "2026-11-25"})],
     "line 2: a run needs 'job' and 'machine'"),
    ([line({"scenario": "batch", "preset": "exact"}, {}, "2026-11-25T10:00:00")], "line 1: unknown scenario 'batch'"),
    ([line({"preset": "exact", "tokens": 100}, stages() | {"cfm_s": None}, "2026-11-25T10:00:00")],
     "line 1: a stages run needs a number 'cfm_s'"),
    ([line({"scenario": "text", "chars": 300, "preset": "exact"}, text(300, 0.1), "2026-11-25T10:00:00",
           upstream={"generate_s": 1.0})], "line 1 (upstream): a text run needs a number 'chars'"),
    ([line({"scenario": "text", "preset": "exact"}, text(300, 0.1), "2026-11-25T10:00:00")],
     "line 1: job.chars is missing"),
    ([line({"preset": "exact", "tokens": 100}, stages(), "yesterday")], "line 1: 'date' is not an ISO date"),
    ([line({"scenario": "text", "chars": 300, "preset": "exact"}, text(300, 0.1) | {"chars": 0},
           "2026-11-25T10:00:00")], "line 1: a text run of 0 characters"),
    (["", "  "], "holds no runs"),
])
def test_bad_input(suite, tmp_path, lines, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        suite.load_runs(write(tmp_path, lines))


def test_missing_file(suite, tmp_path):
    with pytest.raises(ValueError, match="not found"):
        suite.write_report(tmp_path / "absent.jsonl", tmp_path / "suite")
