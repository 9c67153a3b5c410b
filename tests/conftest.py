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
