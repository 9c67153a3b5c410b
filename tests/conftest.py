"""What the tests share: paths, the tiny model (built once per session), a results folder per test, and the tag that marks
every container a test starts, so each test checks only its own containers on an engine other runs may be using.

Tiers: `make quick` runs the tests marked `quick` (in-process, no containers, no servers, seconds); `make test` runs them all."""
import fcntl
import os
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = Path(__file__).parent / 'data'
DEMO_SWE = ROOT / 'crawled_data' / 'bench' / 'demo-swebench.jsonl'
DEMO_BENCH = ROOT / 'crawled_data' / 'bench' / 'demo-task-instances.jsonl'


def run_cli(*args, env=None, cwd=ROOT, timeout=600):
    "Run a command with this interpreter's environment; returns CompletedProcess (text)."
    e = {**os.environ, **(env or {})}
    return subprocess.run(list(args), cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='session', autouse=True)
def _shared_environments(tmp_path_factory):
    """Build logs and the local backend's environments in one folder for the session (`SWEBENCH_LAB_ENVIRONMENTS`), as images
    are shared on the engine: each test keeps its own results, and no test builds again what an earlier one built."""
    mp = pytest.MonkeyPatch()
    mp.setenv('SWEBENCH_LAB_ENVIRONMENTS', str(tmp_path_factory.mktemp('environments')))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _tag(monkeypatch):
    "A tag of this test's own: every container it starts (itself, its subprocesses, its Ray tasks) carries it."
    tag = f'test-{uuid.uuid4().hex[:12]}'
    monkeypatch.setenv('SWEBENCH_LAB_TAG', tag)
    return tag


def tagged_containers(running: bool = False, **labels) -> list:
    "The containers this test started (by its tag), optionally only running ones, or those with more labels."
    from swebench_lab.images import docker_client, LABEL
    flt = [f"{LABEL}.tag={os.environ['SWEBENCH_LAB_TAG']}"] + [f'{k}={v}' for k, v in labels.items()]
    return docker_client().containers.list(all=not running, filters={'label': flt}, ignore_removed=True)


@contextmanager
def one_at_a_time(name: str):
    """Hold the machine-wide lock `name` while the block runs: across pytest's workers and any other test run here (e.g. one
    Ray cluster at a time: several on two cores starve each other's heartbeats)."""
    with open(Path(tempfile.gettempdir()) / f'swebench_lab-tests-{name}.lock', 'w') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try: yield
        finally: fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture
def results_tmp(tmp_path, monkeypatch):
    "Send experiment_results/ to a temporary folder for the test."
    d = tmp_path / 'experiment_results'
    monkeypatch.setenv('SWEBENCH_LAB_RESULTS', str(d))
    return d


@pytest.fixture
def lab_env(tmp_path, monkeypatch):
    """Results in the test's own folder; inputs from the project's crawled_data (images are content-addressed, so layers are
    shared with every other test). Afterwards none of the test's containers may be left."""
    monkeypatch.setenv('SWEBENCH_LAB_RESULTS', str(tmp_path / 'results'))
    monkeypatch.setenv('SWEBENCH_LAB_CRAWLED_DATA', str(ROOT / 'crawled_data'))
    yield tmp_path / 'results'
    from swebench_lab.images import docker_available
    if docker_available(): assert tagged_containers() == [], 'containers left behind'


@pytest.fixture(scope='session')
def tiny(tmp_path_factory):
    """The tiny Qwen2 model (random weights) with its two adapters, built once per worker (seconds): a worker's own copy,
    so a test that looks for servers of that model finds only its worker's."""
    from swebench_lab.tiny import ensure_tiny
    return ensure_tiny(tmp_path_factory.mktemp('tiny'))


def pytest_collection_modifyitems(config, items):
    "Docker tests skip where no engine answers, unless SWEBENCH_LAB_REQUIRE_DOCKER=1 (CI), where they fail."
    if not any('docker' in i.keywords for i in items): return
    from swebench_lab.images import docker_available
    if docker_available(): return
    if os.environ.get('SWEBENCH_LAB_REQUIRE_DOCKER') == '1':
        for i in items:
            if 'docker' in i.keywords:
                i.add_marker(pytest.mark.xfail(reason='no Docker engine answers', strict=True, run=False))
        raise pytest.UsageError('SWEBENCH_LAB_REQUIRE_DOCKER=1 but no Docker engine answers '
                                '(python -m swebench_lab.environments provision)')
    for i in items:
        if 'docker' in i.keywords: i.add_marker(pytest.mark.skip(reason='no Docker engine answers'))
