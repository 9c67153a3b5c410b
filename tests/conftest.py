import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def results_tmp(tmp_path, monkeypatch):
    "Send experiment_results/ to a temporary folder for the test."
    d = tmp_path / 'experiment_results'
    monkeypatch.setenv('SWEBENCH_LAB_RESULTS', str(d))
    return d


def run_cli(*args, env=None, cwd=ROOT, timeout=600):
    "Run a command with this interpreter's environment; returns CompletedProcess (text)."
    e = {**os.environ, **(env or {})}
    return subprocess.run(list(args), cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


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
