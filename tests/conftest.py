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
