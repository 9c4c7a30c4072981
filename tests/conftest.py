import json
import os
import subprocess
import tempfile
import warnings
from importlib.util import find_spec
from pathlib import Path

import pytest

# Upstream's imports are noisy (pkg_resources, diffusers); none of it concerns our code.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"(perth|diffusers|transformers|librosa)")

REQUIRE_ORACLE = os.environ.get("FASTER_CHATTERBOX_REQUIRE_ORACLE") == "1"
# Upstream lives in its own virtual environment (scripts/install-oracle.sh), not in the project's.
ORACLE_VENV = Path(os.environ.get("FASTER_CHATTERBOX_ORACLE_VENV", Path(__file__).parents[1] / ".oracle-venv"))
ORACLE_PYTHON = ORACLE_VENV / "bin" / "python"
# Set only in the oracle venv's pytest run that a session below starts: where that run writes its reports.
REPORTS = os.environ.get("FASTER_CHATTERBOX_ORACLE_REPORTS")
# Without upstream in this process, the tests that use the `oracle` fixture run in the oracle venv, all in
# one pytest process, and this session reports their outcomes. That run never delegates again.
DELEGATE = REPORTS is None and find_spec("chatterbox") is None and ORACLE_PYTHON.is_file()
ORACLE_RUN = pytest.StashKey[tuple]()  # the session's (reports of the oracle run, how that run ended)


@pytest.fixture(scope="session")
def oracle():
    """Upstream chatterbox-tts, the parity oracle. Skips when absent, unless CI requires it."""
    try:
        import chatterbox  # noqa: F401
        import chatterbox.tts  # noqa: F401
    except ImportError as exc:
        message = (f"upstream chatterbox-tts does not import ({exc}) and the oracle venv {ORACLE_VENV} is missing "
                   "or broken: bash scripts/install-oracle.sh")
        if REQUIRE_ORACLE:
            pytest.fail(f"the parity oracle is required: {message}")
        pytest.skip(message)
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


class OracleTest(pytest.Item):
    """An oracle test in a session without upstream: the oracle venv's run executes it, and the
    reports of that run (outcome, traceback, captured output, duration) stand as this item's."""

    def __init__(self, *, test: pytest.Item, **kwargs):
        super().__init__(**kwargs)
        self.test = test

    def reportinfo(self):
        return self.test.reportinfo()

    def runtest(self):  # reached only when the oracle run has no report of this test's call
        _, ending = self.session.stash[ORACLE_RUN]
        raise RuntimeError(f"the oracle run ({ORACLE_PYTHON} -m pytest) reported nothing for this test; {ending}")

    def repr_failure(self, excinfo):
        return str(excinfo.value)


@pytest.hookimpl(trylast=True)  # after -k, -m and --lf have chosen the items
def pytest_collection_modifyitems(items):
    if DELEGATE:
        items[:] = [OracleTest.from_parent(item.parent, name=item.name, test=item)
                    if "oracle" in getattr(item, "fixturenames", ()) else item for item in items]


# A conftest's wrapper is registered last, so it is outermost: the oracle run happens before a per-test
# timeout of this session (pytest-timeout) starts for the item; each test gets that timeout in the run itself.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item):
    if isinstance(item, OracleTest) and ORACLE_RUN not in item.session.stash:
        item.session.stash[ORACLE_RUN] = _run_oracle_tests(item.session)
    yield


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    if isinstance(item, OracleTest):
        reports, _ = item.session.stash[ORACLE_RUN]
        return reports.get((item.nodeid, call.when))  # None: pytest reports what OracleTest itself did
    return None


def _run_oracle_tests(session: pytest.Session) -> tuple[dict, str]:
    """Runs every selected oracle test, in order, in one pytest process of the oracle venv.
    Returns its test reports by (node id, phase) and how it ended."""
    config = session.config
    ids = [item.nodeid for item in session.items if isinstance(item, OracleTest)]
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal:
        terminal.write_line(f"running the {len(ids)} oracle tests in {ORACLE_PYTHON} ...")
    # -x (maxfail) stops that run too; its tracebacks are formatted as this session's; the cache stays ours.
    options = ["-p", "no:cacheprovider", f"--maxfail={config.option.maxfail}", f"--tb={config.option.tbstyle}"]
    if config.getoption("timeout", None):  # pytest-timeout's: it applies to each test there
        options.append(f"--timeout={config.getoption('timeout')}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reports.jsonl"
        run = subprocess.run([str(ORACLE_PYTHON), "-m", "pytest", *options, *ids], cwd=config.rootpath,
                             env={**os.environ, "FASTER_CHATTERBOX_ORACLE_REPORTS": str(path)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = path.read_text().splitlines() if path.exists() else []
    reports = {}
    for line in lines:
        report = config.hook.pytest_report_from_serializable(config=config, data=json.loads(line))
        if isinstance(report.longrepr, list):  # a skip's (path, line, reason), which JSON made a list
            report.longrepr = tuple(report.longrepr)
        reports[report.nodeid, report.when] = report
    return reports, f"it exited with status {run.returncode}, its output ending with:\n{run.stdout[-4000:]}"


class _ReportWriter:
    """In the oracle venv's run: appends each test report, serialised, for the session that started it."""

    def __init__(self, config: pytest.Config):
        self.config = config

    def pytest_runtest_logreport(self, report):
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        with open(REPORTS, "a") as f:
            f.write(json.dumps(data) + "\n")


def pytest_configure(config):
    if REPORTS:
        config.pluginmanager.register(_ReportWriter(config), "oracle-report-writer")


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
