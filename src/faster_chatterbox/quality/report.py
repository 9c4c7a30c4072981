"""The A/B report as HTML with PNG plots (matplotlib, the `bench` extra; without it, tables only)."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.4g}"


def pyplot():
    """matplotlib.pyplot on the file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_outputs(report: dict, path: Path) -> bool:
    """Per-output metrics of A and B as box plots, one panel per metric. False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    names = [n for n, agg in report["aggregate"].items() if agg["kind"] == "output"]
    if not names:
        return False
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        data = [[u[side][name] for u in report["utterances"] if np.isfinite(u[side][name])] for side in ("a", "b")]
        ax.boxplot(data)
        ax.set_xticks([1, 2], ["A", "B"])
        ax.set_title(f"{name} ({report['aggregate'][name]['verdict']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_paired(report: dict, path: Path) -> bool:
    """B's distance from A per utterance, one panel per paired metric, tolerance dashed."""
    plt = pyplot()
    if plt is None:
        return False
    names = [n for n, agg in report["aggregate"].items() if agg["kind"] == "paired"]
    utts = [u for u in report["utterances"] if u["paired"]]
    if not names or not utts:
        return False
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot([u["index"] for u in utts], [u["paired"][name] for u in utts], "o")
        ax.axhline(report["aggregate"][name]["tolerance"], ls="--", c="gray")
        ax.set_title(f"{name} ({report['aggregate'][name]['verdict']})", fontsize=9)
        ax.set_xlabel("utterance")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_html(report: dict, out_dir: Path) -> Path:
    """OUT/report.html: settings, verdict table, plots, per-utterance table with audio players."""
    out_dir = Path(out_dir)
    plots = [name for name, fn in (("outputs.png", plot_outputs), ("paired.png", plot_paired))
             if fn(report, out_dir / name)]
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(n)}</td><td>{a['kind']}</td><td>{_fmt(a['a_mean'])}</td><td>{_fmt(a['b_mean'])}</td>"
        f"<td>{_fmt(a['mean'])}</td><td>[{_fmt(a['ci'][0])}, {_fmt(a['ci'][1])}]</td><td>{a['n']}</td>"
        f"<td>{esc(a['unit'])}</td><td class='{a['verdict']}'>{a['verdict']}</td></tr>"
        for n, a in report["aggregate"].items())
    skipped = "".join(f"<li>{esc(n)}: {esc(why)}</li>" for n, why in report["skipped"].items())
    utt_rows = "".join(
        f"<tr><td>{u['index']}</td><td>{u['seed']}</td><td>{esc(u['text'][:120])}</td><td>{u['same_tokens']}</td>"
        f"<td><audio controls preload='none' src='{u['audio'][0]}'></audio></td>"
        f"<td><audio controls preload='none' src='{u['audio'][1]}'></audio></td></tr>"
        for u in report["utterances"])
    images = "".join(f"<p><img src='{p}'></p>" for p in plots) or "<p>(install matplotlib for plots)</p>"
    warning = "<p class='worse'>Random weights: the audio is noise; this report proves mechanics only.</p>" \
        if report["random_weights"] else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>A/B report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:2px 6px;font-size:13px}}.same{{color:#060}}.better{{color:#06c}}.worse,.differs{{color:#b00}}</style>
</head><body><h1>A/B: {esc(report['a']['name'])} vs {esc(report['b']['name'])}</h1>{warning}
<p>A = <code>{esc(str(report['a']))}</code><br>B = <code>{esc(str(report['b']))}</code><br>
checkpoint {esc(str(report['checkpoint']))}, device {esc(report['device'])}, voice {esc(str(report['voice']))},
seeds {report['seeds']}, max_new_tokens {report['max_new_tokens']}, {report['date']}</p>
<p><b>{report['mode']}</b> comparison: {report['same_tokens']} utterances with identical speech tokens.
Paired metrics: B's distance from A, "same" when the {report['confidence']:.0%} interval is within the
tolerance. Output metrics: mean of B - A per (text, seed), "same" when the interval holds 0.</p>
<table><tr><th>metric</th><th>kind</th><th>A mean</th><th>B mean</th><th>estimate</th>
<th>{report['confidence']:.0%} interval</th><th>n</th><th>unit</th><th>verdict</th></tr>{rows}</table>
<ul>{skipped}</ul>{images}
<h2>Utterances</h2><table><tr><th>#</th><th>seed</th><th>text</th><th>same tokens</th><th>A</th><th>B</th></tr>
{utt_rows}</table></body></html>"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
