import os
import warnings

import pytest

# Upstream's imports are noisy (pkg_resources, diffusers); none of it concerns our code.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"(perth|diffusers|transformers|librosa)")

REQUIRE_ORACLE = os.environ.get("FASTER_CHATTERBOX_REQUIRE_ORACLE") == "1"


@pytest.fixture(scope="session")
def oracle():
    """Upstream chatterbox-tts, the parity oracle. Skips when absent, unless CI requires it."""
    try:
        import chatterbox  # noqa: F401
        import chatterbox.tts  # noqa: F401
    except ImportError as exc:
        if REQUIRE_ORACLE:
            pytest.fail(f"the parity oracle is required but does not import: {exc}")
        pytest.skip("upstream chatterbox-tts is not installed (bash scripts/install-oracle.sh)")
    return chatterbox


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for modules of many small ops (CAMPPlus, the CFM U-Net, small T3 configs):
    on a shared or oversubscribed CPU, OpenMP threads waiting on each other make them up to ~50x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mount_tmpfs(path, options: str) -> None:
    """Mount a tmpfs on `path` (root only); skips the test where mounting is not allowed."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder in which no one can create a file, root included: a read-only tmpfs for root (who ignores
    permissions), mode 0o555 for anyone else."""
    import subprocess

    path = tmp_path / "read-only"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    _mount_tmpfs(path, "ro,size=64k")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs folder: a real full disk (root only; skips otherwise)."""
    import subprocess

    path = tmp_path / "tiny"
    path.mkdir()
    _mount_tmpfs(path, "size=64k")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
