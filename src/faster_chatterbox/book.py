"""Book jobs: a whole book to one audio file per chapter, resumable, in-process or across a Ray cluster.

    faster-chatterbox render-book novel.epub -o out/ --checkpoint DIR --seed 7           # this process
    faster-chatterbox render-book novel.txt -o out/ --ray auto --num-gpus 1               # a Ray cluster

  book --(EPUB spine documents, or headings of a text file)--> chapters
       --(pipeline.plan_chunks, the engine's own planner)--> chunks, each with an id "CCC-KKKK"
       --(one render per chunk: a Ray task, or a call in this process)--> chunks/CCC-KKKK.wav
       --(pipeline.assemble_audio: the engine's trims, pauses and crossfades)--> chapters/CCC.wav

Reproducible and resumable: chunk KKKK of chapter CCC is spoken as its own call seeded with
stream_seed(book seed, "book-chunk", CCC, KKKK), alone in its T3 batch, so its audio depends only on the
book's seed, the chunk's id and text, and the settings: not on which worker renders it, in what order,
nor on what ran before a crash. Each chunk's audio is written whole (a renamed hidden file) as it
arrives, and `manifest.json` (replaced whole after every chunk) records it under a key hashed from the
chunk's text, seed and settings. A re-run renders only the chunks whose key is missing (a crash, Ctrl-C,
an edited chapter), so a resumed book equals an uninterrupted one. The manifest keeps the book's seed:
a re-run without --seed uses it.

Failures: a chunk whose render raises or whose worker dies (Ray reports it) is submitted again, up to
`retries` times; chunks still failing are reported in the manifest and the summary, their chapters left
unassembled, and the other chapters finished. Ctrl-C cancels the renders in flight; what was written stays.

Ray: `ray.init(address)`; one task per chunk with `num_cpus`/`num_gpus` resources; a worker process
loads the model once (a per-process cache) and keeps it for every later task. The driver writes every
file, so OUT_DIR needs to be on the driver only; the voice clip is read by the driver and shipped once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from .audio.io import load_audio, write_audio
from .pipeline import VOICE_SECONDS, assemble_audio, plan_chunks
from .settings import DEFAULT_PRESET, call_settings, engine_settings, integer, real, stream_seed
from .tts import ChatterboxTTS
from .voices import Voice, clip_digest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SR = 24000  # what the model speaks at (ChatterboxTTS.sr)
# a line of its own that names a chapter in a text file: "Chapter 3", "CHAPTER IV. The Storm", "Part One",
# "Prologue", or a Markdown heading "# Title"
_HEADING = re.compile(r"^[ \t]*(?:#{1,3}[ \t]+\S.*|(?:chapter|part|book)[ \t]+[\w.-]+\b.*|prologue|epilogue)[ \t]*$",
                      re.IGNORECASE | re.MULTILINE)
_MAX_HEADING_CHARS = 80


# ---- the book --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chapter:
    title: str
    text: str  # what is spoken, the title included


def read_book(path: str | Path) -> list[Chapter]:
    """The chapters of a UTF-8 text file (split at heading lines) or an EPUB (its spine's documents)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"book {str(path)!r} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".epub":
        chapters = _epub_chapters(path)
    elif suffix in (".txt", ".md", ""):
        try:
            chapters = text_chapters(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"book {path} is not UTF-8 text: {exc}") from None
    else:
        raise ValueError(f"book {path}: unsupported format {suffix!r} (give a .txt or an .epub)")
    if not chapters:
        raise ValueError(f"book {path} has no text to speak")
    return chapters


def text_chapters(text: str) -> list[Chapter]:
    """A plain text's chapters: each heading line (see _HEADING) starts one and is spoken as a sentence of
    its own; text before the first heading is a chapter of its own ("Opening"); no heading: one chapter."""
    text = text.replace("\r\n", "\n")
    starts = [m.start() for m in _HEADING.finditer(text) if len(m.group().strip()) <= _MAX_HEADING_CHARS]
    bounds = [0, *starts, len(text)] if not starts or starts[0] > 0 else [*starts, len(text)]
    chapters = []
    for begin, end in zip(bounds, bounds[1:]):
        body = text[begin:end].strip()
        if not any(ch.isalnum() for ch in body):
            continue
        if begin in starts:
            head, _, rest = body.partition("\n")
            title = head.lstrip("#").strip()
            chapters.append(Chapter(title, f"{_as_sentence(title)}\n\n{rest.strip()}".strip()))
        else:
            chapters.append(Chapter("Opening", body))
    return chapters


def _as_sentence(heading: str) -> str:
    """A heading spoken as a sentence: with a full stop when it ends in a letter or digit."""
    return f"{heading}." if heading and heading[-1].isalnum() else heading


_BLOCKS = ["h1", "h2", "h3", "h4", "p", "li", "blockquote", "pre"]


def _epub_chapters(path: Path) -> list[Chapter]:
    try:
        import ebooklib
        from bs4 import BeautifulSoup
        from ebooklib import epub
    except ImportError as exc:
        raise ValueError(f"reading EPUB books needs the book extra ({exc.name} is missing): "
                         "pip install 'faster-chatterbox[book]'") from None
    try:
        book = epub.read_epub(str(path), options={"ignore_ncx": True})
    except Exception as exc:  # ebooklib raises zipfile, lxml and its own errors for a damaged file
        raise ValueError(f"cannot read EPUB {path}: {exc}") from None
    chapters = []
    for item_id, _linear in book.spine:
        item = book.get_item_with_id(item_id)
        if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT:
            continue
        soup = BeautifulSoup(item.get_content(), "html.parser")
        # innermost blocks only (a <p> inside a <li> or <blockquote> is read once)
        tags = [t for t in soup.find_all(_BLOCKS) if t.find(_BLOCKS) is None]
        blocks = [(t.name, " ".join(t.get_text().split())) for t in tags]
        text = "\n\n".join(_as_sentence(b) if name[0] == "h" else b for name, b in blocks if b)
        if not any(ch.isalnum() for ch in text):
            continue  # a cover, an image page
        heading = next((b for name, b in blocks if name in ("h1", "h2", "h3") and b), None)
        chapters.append(Chapter(heading or f"Part {len(chapters) + 1}", text))
    return chapters


# ---- the job ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BookModel:
    """The model every renderer loads (picklable: shipped to Ray workers)."""

    checkpoint: str | None  # a local checkpoint directory (None: the hub model)
    device: str = "auto"
    preset: str = DEFAULT_PRESET
    decoder: str = "cfm"

    def load(self) -> ChatterboxTTS:
        options = dict(device=self.device, preset=self.preset, watermark=False, decoder=self.decoder)
        if self.checkpoint is None:
            return ChatterboxTTS.from_pretrained(**options)
        return ChatterboxTTS.from_local(self.checkpoint, **options)


@dataclass(frozen=True)
class Speech:
    """How every chunk is spoken: synthesize's arguments (the seed comes per chunk)."""

    exaggeration: float = 0.5
    cfg_weight: float = 0.5
    temperature: float = 0.8
    max_new_tokens: int = 1000


@dataclass(frozen=True)
class VoiceClip:
    """The voice's reference clip as read by the driver (None samples: the checkpoint's built-in voice)."""

    digest: str | None = None
    samples: np.ndarray | None = field(default=None, compare=False)

    @classmethod
    def read(cls, path: str | Path | None) -> VoiceClip:
        if path is None:
            return cls()
        return cls(clip_digest(Path(path)), load_audio(path, SR, max_seconds=VOICE_SECONDS))


@dataclass(frozen=True)
class ChunkTask:
    id: str  # "CCC-KKKK": chapter and chunk numbers, from 1
    chapter: int
    index: int  # in its chapter, from 0
    text: str
    kind: str  # the boundary after it (text.chunking.Chunk.kind)
    seed: int
    key: str  # what the manifest records it under: text, seed and settings, hashed


@dataclass
class Rendered:
    audio: np.ndarray  # (N,) float32 at SR, untrimmed
    attempts: int  # the engine's own attempts (quality retries)
    seconds: float  # render wall time
    worker: str  # host:pid of the process that rendered it


def plan_book(chapters: list[Chapter], model: BookModel, speech: Speech, voice: VoiceClip,
              seed: int) -> list[ChunkTask]:
    """Every chapter's chunks as planned by the engine for `model`'s preset, each with its seed and key;
    `speech` is checked here, before any model loads (a ValueError naming the argument)."""
    real("exaggeration", speech.exaggeration, 0.0)
    call = call_settings(engine_settings(model.preset, "cpu", model.decoder), seed=0, temperature=speech.temperature,
                         cfg_weight=speech.cfg_weight, max_new_tokens=speech.max_new_tokens)
    settings = {**asdict(speech), "preset": model.preset, "decoder": model.decoder, "voice": voice.digest,
                "checkpoint": model.checkpoint}
    tasks = []
    for c, chapter in enumerate(chapters, start=1):
        for k, chunk in enumerate(plan_chunks(chapter.text, call)):
            chunk_seed = stream_seed(seed, "book-chunk", c, k)
            key = hashlib.sha256(json.dumps([chunk.text, chunk.kind, chunk_seed, settings], sort_keys=True)
                                 .encode()).hexdigest()[:32]
            tasks.append(ChunkTask(f"{c:03d}-{k:04d}", c, k, chunk.text, chunk.kind, chunk_seed, key))
    return tasks


def render_chunk(tts: ChatterboxTTS, voice: Voice | None, speech: Speech, task: ChunkTask) -> Rendered:
    """One chunk as its own seeded call, untrimmed (the chapter's assembly trims and joins); voice None:
    the checkpoint's built-in voice."""
    start = time.perf_counter()
    result = tts.synthesize(task.text, voice=voice, seed=task.seed, watermark=False, progress=False, **asdict(speech))
    return Rendered(result.audio, max(c.attempts for c in result.chunks), time.perf_counter() - start,
                    f"{os.uname().nodename}:{os.getpid()}")


def _speaker(model: BookModel, clip: VoiceClip) -> tuple[ChatterboxTTS, Voice | None]:
    tts = model.load()
    return tts, None if clip.samples is None else tts.conditionals_from_wav(clip.samples, SR)


@functools.cache
def _worker_speaker(model: BookModel, clip: VoiceClip) -> tuple[ChatterboxTTS, Voice | None]:
    """This Ray worker process's model and voice, made at its first task and kept for the next ones."""
    return _speaker(model, clip)


def _ray_render(model: BookModel, clip: VoiceClip, speech: Speech, task: ChunkTask) -> Rendered:
    return render_chunk(*_worker_speaker(model, clip), speech, task)


# ---- renderers: where chunks are rendered ------------------------------------------------------
class LocalRenderer:
    """Chunks rendered one after another in this process, on one model."""

    def __init__(self, model: BookModel, speech: Speech, clip: VoiceClip):
        (self.tts, self.voice), self.speech = _speaker(model, clip), speech
        self.queue: deque[ChunkTask] = deque()

    def submit(self, task: ChunkTask) -> None:
        self.queue.append(task)

    @property
    def pending(self) -> int:
        return len(self.queue)

    def next(self) -> tuple[ChunkTask, Rendered | Exception]:
        task = self.queue.popleft()
        try:
            return task, render_chunk(self.tts, self.voice, self.speech, task)
        except Exception as exc:  # reported and retried by the job
            return task, exc

    def close(self) -> None:
        self.tts.close()


class RayRenderer:
    """Chunks rendered as Ray tasks across the cluster at `address`, taken as they finish."""

    def __init__(self, address: str | None, model: BookModel, speech: Speech, clip: VoiceClip, *,
                 num_cpus: float = 1.0, num_gpus: float = 0.0):
        try:
            import ray
        except ImportError as exc:
            raise ValueError(f"render-book --ray needs the ray extra ({exc.name} is missing): "
                             "pip install 'faster-chatterbox[ray]'") from None
        self.ray, self.connected = ray, not ray.is_initialized()  # a caller's own connection is left open
        if self.connected:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        # the job retries itself (so it can report each failure); Ray only runs the task
        self.remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_ray_render)
        self.args = ray.put(model), ray.put(clip), ray.put(speech)
        self.running: dict = {}  # ObjectRef -> ChunkTask

    def submit(self, task: ChunkTask) -> None:
        self.running[self.remote.remote(*self.args, task)] = task

    @property
    def pending(self) -> int:
        return len(self.running)

    def next(self) -> tuple[ChunkTask, Rendered | Exception]:
        [ready], _ = self.ray.wait(list(self.running), num_returns=1)
        task = self.running.pop(ready)
        try:
            return task, self.ray.get(ready)
        except Exception as exc:  # the task's error, or the worker's death (RayError)
            return task, exc

    def close(self) -> None:
        for ref in self.running:
            self.ray.cancel(ref, force=True)
        self.running.clear()
        if self.connected:
            self.ray.shutdown()


# ---- the job ---------------------------------------------------------------------------------
@dataclass
class BookReport:
    chunks: int  # in the book
    skipped: int  # already rendered (found in the manifest)
    rendered: int  # in this run
    failed: dict[str, str]  # chunk id -> its last error
    chapters: list[Path]  # written in this run or before
    seconds: float

    @property
    def chunks_per_minute(self) -> float:
        return 60.0 * self.rendered / self.seconds if self.seconds > 0 else 0.0


class Manifest:
    """OUT_DIR/manifest.json: the book's seed, and every rendered chunk under its key; replaced whole."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / MANIFEST
        self.data = {"version": MANIFEST_VERSION, "seed": None, "chunks": {}, "failed": {}, "chapters": {}}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read {self.path}: {exc} (remove it to start the book again)") from None
            if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"{self.path} is not a render-book manifest of version {MANIFEST_VERSION}")
            self.data.update(data)

    def done(self, task: ChunkTask, out_dir: Path) -> bool:
        entry = self.data["chunks"].get(task.id)
        return entry is not None and entry["key"] == task.key and (out_dir / entry["file"]).is_file()

    def save(self) -> None:
        fd, staging = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(staging, self.path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise


def render_book(book: str | Path, out_dir: str | Path, *, model: BookModel, speech: Speech = Speech(),
                voice: str | Path | None = None, seed: int | None = None, ray_address: str | None = None,
                use_ray: bool = False, num_cpus: float = 1.0, num_gpus: float = 0.0, retries: int = 2,
                watermark: bool = True, progress: bool = True) -> BookReport:
    """Render `book` into `out_dir` (chunks/, chapters/, manifest.json), resuming what a previous run left.

    seed: the book's seed (default: the manifest's, else 0). use_ray: render on the Ray cluster at
    `ray_address` (None: start one on this machine; a process already connected to Ray uses that
    connection), else in this process. retries: new attempts for a
    chunk whose render fails. watermark: the chapters (not the chunks) get the Perth watermark.
    """
    start = time.perf_counter()
    retries = integer("retries", retries, 0, 100)
    out_dir = Path(out_dir)
    chapters = read_book(book)
    (out_dir / "chunks").mkdir(parents=True, exist_ok=True)
    (out_dir / "chapters").mkdir(exist_ok=True)
    manifest = Manifest(out_dir)
    if seed is None:
        seed = manifest.data["seed"] if manifest.data["seed"] is not None else 0
    seed = integer("seed", seed, 0)
    clip = VoiceClip.read(voice)
    tasks = plan_book(chapters, model, speech, clip, seed)
    manifest.data.update(seed=seed, book=Path(book).name, failed={},
                         titles={f"{c:03d}": ch.title for c, ch in enumerate(chapters, start=1)})
    missing = [t for t in tasks if not manifest.done(t, out_dir)]
    report = BookReport(len(tasks), len(tasks) - len(missing), 0, {}, [], 0.0)
    by_chapter: dict[int, list[ChunkTask]] = {}
    for task in tasks:
        by_chapter.setdefault(task.chapter, []).append(task)
    log.info("%s: %d chapters, %d chunks, %d to render (seed %d)", book, len(chapters), len(tasks), len(missing), seed)

    renderer = None
    bar = tqdm(total=len(tasks), initial=report.skipped, desc="Chunks", unit="chunk", disable=not progress or None)
    try:
        if missing:
            renderer = (RayRenderer(ray_address, model, speech, clip, num_cpus=num_cpus, num_gpus=num_gpus)
                        if use_ray else LocalRenderer(model, speech, clip))
            for task in missing:
                renderer.submit(task)
        attempts: dict[str, int] = {}
        while renderer is not None and renderer.pending:
            task, outcome = renderer.next()
            if isinstance(outcome, Exception):
                attempts[task.id] = attempts.get(task.id, 0) + 1
                message = " ".join(f"{type(outcome).__name__}: {outcome}".split())[:500]
                if attempts[task.id] <= retries:
                    log.warning("chunk %s failed (attempt %d of %d), retrying: %s", task.id, attempts[task.id],
                                retries + 1, message)
                    renderer.submit(task)
                else:
                    log.error("chunk %s failed %d times, giving up: %s", task.id, attempts[task.id], message)
                    report.failed[task.id] = manifest.data["failed"][task.id] = message
                    manifest.save()
                continue
            _store(out_dir, manifest, task, outcome, retried=attempts.get(task.id, 0))
            report.rendered += 1
            bar.update(1)
            chapter = by_chapter[task.chapter]
            if all(manifest.done(t, out_dir) for t in chapter):
                report.chapters.append(_assemble(out_dir, manifest, chapter, watermark))
        # chapters complete before this run (or assembled by a run that stopped before writing them)
        for number, chapter in by_chapter.items():
            if all(manifest.done(t, out_dir) for t in chapter) and not _assembled(out_dir, manifest, chapter):
                report.chapters.append(_assemble(out_dir, manifest, chapter, watermark))
    finally:
        bar.close()
        if renderer is not None:
            renderer.close()
    report.chapters = sorted({*report.chapters, *(out_dir / "chapters" / f for f in manifest.data["chapters"])})
    report.seconds = time.perf_counter() - start
    return report


def _store(out_dir: Path, manifest: Manifest, task: ChunkTask, rendered: Rendered, retried: int) -> None:
    """Write a chunk's audio whole, then record it (a crash between the two re-renders just that chunk)."""
    name = f"chunks/{task.id}.wav"
    write_audio(out_dir / name, rendered.audio, SR, float_wav=True)  # never empty: synthesize raises NoSpeechError
    manifest.data["chunks"][task.id] = {"key": task.key, "file": name, "seconds": round(len(rendered.audio) / SR, 3),
                                        "render_s": round(rendered.seconds, 3), "engine_attempts": rendered.attempts,
                                        "job_retries": retried, "worker": rendered.worker}
    manifest.save()


def _chapter_key(chapter: list[ChunkTask]) -> str:
    return hashlib.sha256("".join(t.key for t in chapter).encode()).hexdigest()[:32]


def _assembled(out_dir: Path, manifest: Manifest, chapter: list[ChunkTask]) -> bool:
    name = f"{chapter[0].chapter:03d}.wav"
    return manifest.data["chapters"].get(name) == _chapter_key(chapter) and (out_dir / "chapters" / name).is_file()


def _assemble(out_dir: Path, manifest: Manifest, chapter: list[ChunkTask], watermark: bool) -> Path:
    """A chapter's chunks joined in order with the engine's trims, pauses and crossfades, written whole."""
    audio = [sf.read(out_dir / manifest.data["chunks"][t.id]["file"], dtype="float32")[0] for t in chapter]
    joined, _ = assemble_audio(audio, [t.kind for t in chapter], SR, trim=True)
    if watermark:
        from .watermark import Watermarker

        joined = Watermarker().apply_watermark(joined, sample_rate=SR)
    name = f"{chapter[0].chapter:03d}.wav"
    path = out_dir / "chapters" / name
    write_audio(path, joined, SR)
    manifest.data["chapters"][name] = _chapter_key(chapter)
    manifest.save()
    return path


def summary_lines(report: BookReport) -> Iterator[str]:
    yield (f"{report.chunks} chunks: {report.skipped} already rendered, {report.rendered} rendered now "
           f"({report.chunks_per_minute:.1f} per minute), {len(report.failed)} failed; "
           f"{len(report.chapters)} chapter file(s) in {report.seconds:.1f} s")
    for chunk_id, message in report.failed.items():
        yield f"failed: chunk {chunk_id}: {message}"
