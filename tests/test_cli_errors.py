"""The command line as a new user meets it: output problems before any work, offline at once, Ctrl-C any time."""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

import faster_chatterbox
from faster_chatterbox import checkpoint
from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.checkpoint import CHECKPOINT_FILES, CheckpointError, download_checkpoint
from faster_chatterbox.cli import main
from faster_chatterbox.random_checkpoint import write_random_checkpoint

SRC = str(Path(faster_chatterbox.__file__).parents[1])  # this checkout's code, for the CLI subprocesses
LONG_TEXT = "A sentence that takes the small model a while to speak. " * 200  # minutes of synthesis

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("small") / "ckpt", seed=1, small=True)


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m faster_chatterbox.cli ARGS` with Ctrl-C at its default (a background shell ignores it), and the
    hub settings only of `env`."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    return subprocess.Popen([sys.executable, "-m", "faster_chatterbox.cli", *args], stderr=subprocess.PIPE, text=True,
                            env={**inherited, "PYTHONPATH": SRC, **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _run_cli(*args: str, env: dict | None = None) -> tuple[int, str, float]:
    start = time.perf_counter()
    process = _cli(*args, env=env)
    _, err = process.communicate(timeout=120)
    return process.returncode, err, time.perf_counter() - start


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ---- B: output problems are found before the model is loaded ------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr("faster_chatterbox.cli._load_model", load)


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize("output, problem", [
    ("folder.wav", "it is a folder"),
    ("a-file/out.wav", "{tmp}/a-file is not a folder"),
    ("out.m4a", "unsupported extension '.m4a'"),
])
def test_speak_checks_the_output_before_any_work(small_ckpt, tmp_path, capsys, output, problem):
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "a-file").write_text("x")
    assert main(["speak", "Hello.", "--checkpoint", str(small_ckpt), "-o", str(tmp_path / output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot write {tmp_path / output}: ")
    assert problem.format(tmp=tmp_path) in err


@pytest.mark.usefixtures("no_model")
def test_speak_wants_room_for_the_text(small_ckpt, tiny_fs, capsys):
    """The free space asked for grows with the text: a line fits in 64 KiB, 60 000 characters (over an hour of
    speech, ~27 MB of mp3) do not."""
    argv = ["--checkpoint", str(small_ckpt), "-o", str(tiny_fs / "out.mp3")]
    with pytest.raises(AssertionError, match="the model was loaded"):  # the output check passed
        main(["speak", "Hello there.", *argv])
    book = tiny_fs.parent / "book.txt"
    book.write_text("word " * 12_000, encoding="utf-8")
    assert main(["speak", "--text-file", str(book), *argv]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tiny_fs / 'out.mp3'}: only 0.07 MB free in {tiny_fs}, about 7.20 MB needed" in err


def test_speak_into_a_read_only_folder_fails_before_synthesis(small_ckpt, read_only_dir, tmp_path):
    """A text that takes minutes; the command ends in seconds, with one line naming the folder."""
    text_file = tmp_path / "long.txt"
    text_file.write_text(LONG_TEXT, encoding="utf-8")
    code, err, elapsed = _run_cli("speak", "--text-file", str(text_file), "--checkpoint", str(small_ckpt),
                                  "-o", str(read_only_dir / "out.wav"), "--no-watermark")
    assert code == 2 and "Traceback" not in err
    why = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert _error_lines(err) == [f"error: cannot write {read_only_dir / 'out.wav'}: cannot create a file in "
                                 f"{read_only_dir} ({why})"]
    assert "RANDOM weights" not in err  # the model was never loaded
    assert elapsed < 30  # start-up (torch's import) only
    assert list(read_only_dir.iterdir()) == []


def test_user_errors_are_one_line(small_ckpt, tmp_path, capsys):
    sf.write(tmp_path / "short.wav", synthetic_voice(1.0, 16000)[:3200], 16000)
    (tmp_path / "voice-folder").mkdir()
    for voice, problem in [
        ("short.wav", f"reference audio {tmp_path / 'short.wav'} is 0.2 s long; a voice needs at least 0.5 s of "
                      "speech (10 s of clean speech is best)"),
        ("voice-folder", f"reference audio {tmp_path / 'voice-folder'} does not exist or is not a file"),
    ]:
        assert main(["speak", "Hi.", "--checkpoint", str(small_ckpt), "-o", str(tmp_path / "x.wav"), "--no-watermark",
                     "--voice", str(tmp_path / voice)]) == 2
        err = capsys.readouterr().err
        assert _error_lines(err) == [f"error: {problem}"]
        assert "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()


# ---- C: offline ----------------------------------------------------------------------------------------------
def _closed_port_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed: connection refused


@pytest.fixture
def silent_endpoint():
    """A hub that accepts connections and never answers: any request waits until its timeout."""
    server = socket.create_server(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache, HF_HUB_OFFLINE off; returns a function that sets the endpoint."""
    import huggingface_hub.file_download  # noqa: F401  -- imported here, not in the timings

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    return lambda endpoint: monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)


def _cache(small_ckpt, cache: Path, names=CHECKPOINT_FILES) -> Path:
    """The small checkpoint as a Hugging Face cache snapshot of ResembleAI/chatterbox (revision main)."""
    repo = cache / "models--ResembleAI--chatterbox"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name in names:
        shutil.copy(small_ckpt / name, snapshot / name)
    return snapshot


def test_download_fails_at_once_without_network(hub):
    hub(_closed_port_endpoint())
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"cannot download ve.safetensors, .*conds.pt of ResembleAI/chatterbox "
                                              r"\(revision main\): the Hugging Face hub at http://127.0.0.1:\d+ does "
                                              r"not answer \(ConnectError: .*\)\. Without network, pass "
                                              r".*--checkpoint"):
        download_checkpoint()
    assert time.perf_counter() - start < 2.0  # hf_hub_download alone retried for ~26 s


def test_download_waits_for_the_hub_at_most_the_timeout(hub, silent_endpoint, monkeypatch):
    hub(silent_endpoint)
    monkeypatch.setattr(checkpoint, "HUB_CHECK_TIMEOUT_S", 0.5)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="does not answer"):
        download_checkpoint()
    assert time.perf_counter() - start < 1.5


def test_download_with_hf_hub_offline(hub, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="^HF_HUB_OFFLINE is set and the Hugging Face cache lacks ve.safetensors"):
        download_checkpoint()


def test_a_cached_checkpoint_needs_no_network(small_ckpt, hub, silent_endpoint, tmp_path, monkeypatch):
    """Cache first: the hub is not asked at all (a silent one would hold every request 3 s)."""
    hub(silent_endpoint)
    snapshot = _cache(small_ckpt, tmp_path / "hub")
    start = time.perf_counter()
    assert download_checkpoint() == snapshot
    assert time.perf_counter() - start < 0.5
    (snapshot / "tokenizer.json").unlink()  # one file missing: online for it, which fails at once
    monkeypatch.setattr(checkpoint, "HUB_CHECK_TIMEOUT_S", 0.5)
    with pytest.raises(CheckpointError, match=r"cannot download tokenizer.json of ResembleAI/chatterbox"):
        download_checkpoint()


def test_hub_retry_warnings_are_silenced(caplog):
    with caplog.at_level(logging.WARNING):
        with checkpoint._quiet_hub_retries():
            logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 8s [Retry 5/5].")
        logging.getLogger("huggingface_hub.utils._http").warning("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]


def _hub_unreachable() -> bool:
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return True
    return False


@pytest.fixture(scope="module")
def fail_at_once_s(tmp_path_factory):
    """How long `speak` takes to fail at once (start-up and imports, mostly torch's), to compare with."""
    missing = tmp_path_factory.mktemp("missing")
    return _run_cli("speak", "Hello.", "-o", str(missing / "x.wav"), "--checkpoint", str(missing / "none"))[2]


@pytest.mark.parametrize("endpoint, offline", [("closed port", None), ("default", None), ("closed port", "1")])
def test_speak_offline_fails_at_once_with_one_line(tmp_path, fail_at_once_s, endpoint, offline):
    """No --checkpoint and no network (HF_HUB_OFFLINE unset, or set): one line, exit 2, about as fast as failing at
    once; it took 26 s and 12 retry warnings. "default" is the real hub, where this machine has no network."""
    env = {"HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    if endpoint == "closed port":
        env["HF_ENDPOINT"] = _closed_port_endpoint()
    elif not _hub_unreachable():
        pytest.skip("the hub is reachable from here: this case would download the checkpoint")
    if offline:
        env["HF_HUB_OFFLINE"] = offline
    code, err, elapsed = _run_cli("speak", "Hello.", "-o", str(tmp_path / "x.wav"), "--device", "cpu", env=env)
    assert code == 2 and "Traceback" not in err and "Retrying" not in err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--checkpoint DIR" in err
    assert ("HF_HUB_OFFLINE is set" if offline else "does not answer") in err
    assert elapsed < fail_at_once_s + 3.0, f"{elapsed:.1f} s, where failing at once takes {fail_at_once_s:.1f} s"


# ---- D: Ctrl-C -----------------------------------------------------------------------------------------------
def _interrupt(process: subprocess.Popen, after_line: str | None, seconds: float) -> tuple[int, str]:
    """SIGINT `seconds` after stderr shows a line with `after_line` (None: after the start); returns (rc, stderr)."""
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for line in process.stderr:
            lines.append(line)
            if after_line is not None and after_line in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if after_line is not None:
        assert seen.wait(60), f"never saw {after_line!r}: {''.join(lines)}"
    time.sleep(seconds)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    finally:
        process.kill()
    reader.join(5)
    return process.returncode, "".join(lines)


@pytest.mark.parametrize("after_line, seconds", [(None, 1.0), ("RANDOM weights", 0.0), ("RANDOM weights", 3.0)],
                         ids=["importing", "loading", "speaking"])
def test_ctrl_c_exits_130_with_one_line(small_ckpt, tmp_path, after_line, seconds):
    """At 1 s the CLI is importing torch and the models; the random-weights warning comes as the model loads, and
    3 s later it is speaking (the engine's threads in torch: exiting through finalisation aborted in C++)."""
    out = tmp_path / "out.wav"
    process = _cli("speak", LONG_TEXT, "--checkpoint", str(small_ckpt), "-o", str(out), "--no-watermark")
    code, err = _interrupt(process, after_line, seconds)
    assert code == 130, err
    assert err.splitlines()[-1] == "interrupted" and "Traceback" not in err and "terminate called" not in err
    assert list(tmp_path.iterdir()) == []  # no output, no .part


def test_the_package_imports_nothing_heavy():
    """The CLI's Ctrl-C handler can only cover what runs after the package and cli module are imported."""
    code = "import sys, faster_chatterbox.cli; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert done.stdout.strip() == "[]", done.stderr
