"""render-book without a model: chapters from text headings and from an EPUB's spine, the plan's ids,
seeds and keys, the manifest, retries and failures reported (a stand-in renderer), bad input named, and
the Ray Serve config's checks. The real renders, Ray and the kills are in test_ray.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faster_chatterbox import book
from faster_chatterbox.book import (BookModel, Chapter, Rendered, Speech, VoiceClip, plan_book, read_book,
                                    render_book, text_chapters)
from faster_chatterbox.cli import main

MODEL = BookModel(None, device="cpu")


def test_text_chapters_split_at_heading_lines_spoken_as_sentences():
    text = ("Some words before any heading,\nhard-wrapped.\n\nChapter 1\n\nThe first body.\n\n"
            "# Part Two: the return\n\nSecond body.\r\n\r\nCHAPTER IV. The Storm\n\nThird.\n\n"
            "A line mentioning chapter 5 inside a sentence stays in its chapter.")
    chapters = text_chapters(text)
    assert [c.title for c in chapters] == ["Opening", "Chapter 1", "Part Two: the return", "CHAPTER IV. The Storm"]
    assert chapters[0].text == "Some words before any heading,\nhard-wrapped."  # untouched
    assert chapters[1].text == "Chapter 1.\n\nThe first body."
    assert chapters[2].text == "Part Two: the return.\n\nSecond body."
    assert chapters[3].text.endswith("stays in its chapter.")
    assert text_chapters("No heading at all. Just words.") == [Chapter("Opening", "No heading at all. Just words.")]
    assert text_chapters("Chapter 1\n\n***\n\nChapter 2\n\nWords.")[0].title == "Chapter 1"  # a heading is speech


def test_epub_chapters_follow_the_spine(tmp_path):
    epub = pytest.importorskip("ebooklib.epub", reason="the book extra: pip install -e '.[book]'")
    doc = epub.EpubBook()
    doc.set_identifier("id1")
    doc.set_title("A test")
    doc.set_language("en")
    pages = []
    for n, (title, body) in enumerate([("The Start", "<p>First page.</p><ul><li><p>An item.</p></li></ul>"),
                                       (None, "<img src='x.png'/>"), ("The End", "<p>Last <b>page</b>.</p>")]):
        page = epub.EpubHtml(title=title or "cover", file_name=f"p{n}.xhtml")
        page.content = (f"<html><body>{f'<h1>{title}</h1>' if title else ''}{body}</body></html>")
        doc.add_item(page)
        pages.append(page)
    doc.spine = [pages[2], pages[1], pages[0]]  # the spine's order, not the files'
    doc.add_item(epub.EpubNcx())
    doc.add_item(epub.EpubNav())
    epub.write_epub(str(tmp_path / "b.epub"), doc)
    chapters = read_book(tmp_path / "b.epub")
    assert chapters == [Chapter("The End", "The End.\n\nLast page."), Chapter("The Start",
                                                                            "The Start.\n\nFirst page.\n\nAn item.")]


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, "is not a file"),
    ("b.pdf", b"%PDF", "unsupported format '.pdf'"),
    ("b.txt", b"\xff\xfe\x00bad", "is not UTF-8"),
    ("b.txt", b" \n\n*** \n", "has no text to speak"),
    ("b.epub", b"not a zip", "cannot read EPUB"),
])
def test_bad_books_are_named(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_book(tmp_path / name)


def test_plan_ids_seeds_and_keys():
    chapters = [Chapter("One", "One.\n\nA first paragraph. It has two sentences."), Chapter("Two", "Two.\n\nOther.")]
    plan = plan_book(chapters, MODEL, Speech(), VoiceClip(), seed=3)
    assert [t.id for t in plan] == ["001-0000", "001-0001", "002-0000", "002-0001"]
    assert [t.kind for t in plan] == ["paragraph", "end", "paragraph", "end"]
    assert len({t.seed for t in plan}) == len({t.key for t in plan}) == 4
    assert plan == plan_book(chapters, MODEL, Speech(), VoiceClip(), seed=3)  # a re-run plans the same
    other_seed = plan_book(chapters, MODEL, Speech(), VoiceClip(), seed=4)
    assert all(a.seed != b.seed and a.key != b.key for a, b in zip(plan, other_seed))
    warmer = plan_book(chapters, MODEL, Speech(temperature=0.9), VoiceClip(), seed=3)
    assert all(a.seed == b.seed and a.key != b.key for a, b in zip(plan, warmer))  # settings change the key
    edited = plan_book([chapters[0], Chapter("Two", "Two.\n\nEdited.")], MODEL, Speech(), VoiceClip(), seed=3)
    assert [a.key == b.key for a, b in zip(plan, edited)] == [True, True, True, False]


class _FakeRenders:
    """Stands in for the model: a chunk's audio is a tone from its seed; `failing` chunk ids raise."""

    def __init__(self, failing: dict[str, int]):
        self.failing, self.calls = dict(failing), []

    def __call__(self, tts, voice, speech, task):
        self.calls.append(task.id)
        if self.failing.get(task.id, 0) > 0:
            self.failing[task.id] -= 1
            raise RuntimeError(f"boom in {task.id}")
        rng = np.random.default_rng(task.seed % 2**32)
        return Rendered((0.3 * rng.standard_normal(4800)).astype(np.float32), 1, 0.0, "here")


@pytest.fixture
def fake(monkeypatch):
    def install(failing=None):
        renders = _FakeRenders(failing or {})
        monkeypatch.setattr(book, "_speaker", lambda model, clip: (None, None))
        monkeypatch.setattr(book, "render_chunk", renders)
        monkeypatch.setattr(book.LocalRenderer, "close", lambda self: None)
        return renders
    return install


BOOK = "Chapter 1\n\nOne sentence here.\n\nAnother one.\n\nChapter 2\n\nThe second chapter's only words."


def test_failures_are_retried_then_reported_and_a_rerun_finishes(tmp_path, fake):
    (tmp_path / "b.txt").write_text(BOOK)
    out = tmp_path / "out"
    renders = fake({"001-0001": 1, "002-0001": 5})  # one flaky chunk, one failing every time
    report = render_book(tmp_path / "b.txt", out, model=MODEL, seed=2, retries=2, watermark=False, progress=False)
    assert report.failed.keys() == {"002-0001"} and "boom in 002-0001" in report.failed["002-0001"]
    assert renders.calls.count("001-0001") == 2 and renders.calls.count("002-0001") == 3
    assert [p.name for p in report.chapters] == ["001.wav"]  # chapter 2 waits for its chunk
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 2 and manifest["failed"].keys() == {"002-0001"}
    assert manifest["chunks"]["001-0001"]["job_retries"] == 1
    assert sorted(p.name for p in (out / "chunks").iterdir()) == ["001-0000.wav", "001-0001.wav", "001-0002.wav",
                                                                  "002-0000.wav"]  # nothing half-written
    renders = fake()
    again = render_book(tmp_path / "b.txt", out, model=MODEL, watermark=False, progress=False)  # the seed: 2
    assert renders.calls == ["002-0001"] and (again.skipped, again.rendered, again.failed) == (4, 1, {})
    assert [p.name for p in again.chapters] == ["001.wav", "002.wav"]
    assert json.loads((out / "manifest.json").read_text())["failed"] == {}


def test_a_changed_seed_renders_everything_again(tmp_path, fake):
    (tmp_path / "b.txt").write_text(BOOK)
    fake()
    render_book(tmp_path / "b.txt", tmp_path / "out", model=MODEL, seed=1, watermark=False, progress=False)
    renders = fake()
    report = render_book(tmp_path / "b.txt", tmp_path / "out", model=MODEL, seed=9, watermark=False, progress=False)
    assert report.skipped == 0 and len(renders.calls) == report.chunks == 5


def test_a_foreign_manifest_is_refused(tmp_path, fake):
    (tmp_path / "b.txt").write_text(BOOK)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text('{"version": 99}')
    with pytest.raises(ValueError, match="not a render-book manifest"):
        render_book(tmp_path / "b.txt", tmp_path / "out", model=MODEL, progress=False)
    (tmp_path / "out" / "manifest.json").write_text("{broken")
    with pytest.raises(ValueError, match="remove it to start the book again"):
        render_book(tmp_path / "b.txt", tmp_path / "out", model=MODEL, progress=False)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["render-book", str(tmp_path / "none.txt"), "-o", str(tmp_path / "o")]) == 2
    assert "is not a file" in capsys.readouterr().err
    (tmp_path / "b.txt").write_text(BOOK)
    assert main(["render-book", str(tmp_path / "b.txt"), "-o", str(tmp_path / "o"), "--retries", "-1"]) == 2
    assert "retries must be an integer" in capsys.readouterr().err
    assert main(["serve", "--replicas", "2"]) == 2
    assert "need --ray" in capsys.readouterr().err


def test_ray_serve_config_checks_its_scaling():
    ray_serve = pytest.importorskip("faster_chatterbox.server.ray_serve", reason="the ray extra")
    config = ray_serve.RayServeConfig
    options = ray_serve.deployment_options(config(min_replicas=1, max_replicas=4, max_concurrency=8))
    assert options["autoscaling_config"]["max_replicas"] == 4 and options["max_ongoing_requests"] == 16
    assert options["autoscaling_config"]["target_ongoing_requests"] == 8
    assert ray_serve.deployment_options(config(replicas=3))["num_replicas"] == 3
    assert ray_serve.deployment_options(config(num_gpus=1))["max_ongoing_requests"] == 64  # GPU batch 32
    with pytest.raises(ValueError, match="either replicas or"):
        config(replicas=2, max_replicas=3)
    with pytest.raises(ValueError, match="above max_replicas"):
        config(min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError, match="replicas"):
        config(replicas=0)
    with pytest.raises(ValueError, match="extra"):
        config(unknown=1)
    with pytest.raises(ValueError, match="either checkpoint or random_weights"):
        config(checkpoint="/x", random_weights="small")


def test_ctrl_c_stops_a_local_book_cleanly(tmp_path):
    """The CLI in this process's mode, interrupted after its first chunk: exit 130, a whole manifest, no
    staged files (the re-run's resume is test_ray's)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from faster_chatterbox.random_checkpoint import write_random_checkpoint

    ckpt = write_random_checkpoint(tmp_path / "ckpt", seed=1, small=True)
    (tmp_path / "b.txt").write_text(BOOK)
    out = tmp_path / "out"
    src = Path(__file__).resolve().parents[1] / "src"
    # one thread: on this shared 2-core machine two OpenMP threads can run 20x slower under load
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "faster_chatterbox.cli", "render-book", str(tmp_path / "b.txt"), "-o", str(out),
               "--checkpoint", str(ckpt), "--device", "cpu", "--max-new-tokens", "10", "--no-watermark"]
    # as a terminal's Ctrl-C finds it: SIGINT neither ignored nor blocked (as some test before may leave this
    # process: the child inherits both, and Python then installs no KeyboardInterrupt handler)
    def restore():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=restore)
    deadline = time.monotonic() + 120
    while not (out / "chunks").is_dir() or not any((out / "chunks").glob("*.wav")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130 and "interrupted" in proc.stderr.read()
    done = json.loads((out / "manifest.json").read_text())["chunks"]
    assert 1 <= len(done) < 5 and not list(out.rglob(".*"))  # no hidden staging file left behind


def test_the_documented_serve_config_is_valid(tmp_path):
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("ray")
    from pathlib import Path

    from ray.serve.schema import ServeDeploySchema

    from faster_chatterbox.server.ray_serve import app_builder

    text = (Path(__file__).resolve().parents[1] / "docs" / "ray-serve.yaml").read_text()
    config = ServeDeploySchema.model_validate(yaml.safe_load(text))
    [app] = config.applications
    assert app.import_path == "faster_chatterbox.server.ray_serve:app_builder"
    assert app_builder(app.args) is not None  # the builder takes the documented arguments
    with pytest.raises(ValueError, match="replicas"):
        app_builder({**app.args, "replicas": 2})


@pytest.mark.parametrize("speech, message", [(Speech(temperature=0.0), "temperature"),
                                             (Speech(max_new_tokens=0), "max_new_tokens"),
                                             (Speech(exaggeration=-1.0), "exaggeration")])
def test_bad_settings_are_named_before_any_model_loads(speech, message):
    with pytest.raises(ValueError, match=message):
        plan_book([Chapter("One", "Words.")], MODEL, speech, VoiceClip(), seed=1)
