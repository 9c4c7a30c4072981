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
