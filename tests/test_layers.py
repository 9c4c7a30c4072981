"""The layer contract (pyproject.toml, [tool.importlinter]): interfaces -> facade -> engine -> models ->
audio/text helpers; nothing imports upward. Checked by import-linter, on the package and on a copy with a
deliberately added upward import, which it must refuse."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("importlinter", reason="import-linter is a test extra (pip install -e '.[test]')")


def _lint_imports(src: Path) -> subprocess.CompletedProcess:
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports (import-linter) is not on PATH")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_the_package_keeps_its_layers():
    run = _lint_imports(ROOT / "src")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 kept, 0 broken" in run.stdout


@pytest.mark.parametrize("module,upward", [
    ("models/llama.py", "from ..pipeline import Engine  # noqa"),   # a model reaching into the engine
    ("pipeline.py", "from .tts import ChatterboxTTS  # noqa"),      # the engine reaching into the facade
    ("audio/io.py", "from ..models.s3gen import S3Gen  # noqa"),     # a helper reaching into the models
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward):
    shutil.copytree(ROOT / "src" / "faster_chatterbox", tmp_path / "faster_chatterbox",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "faster_chatterbox" / module
    target.write_text(target.read_text() + "\n" + upward + "\n")
    run = _lint_imports(tmp_path)
    assert run.returncode != 0 and "BROKEN" in run.stdout, run.stdout
