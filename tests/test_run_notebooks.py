"""Each run notebook in nbs/runs/ runs through papermill with tiny parameters and leaves a complete
run record; secrets in the environment appear in none of its outputs."""
import json

import pytest

from swebench_lab.runs import execute_run, list_runs

TINY = {'demo': {'n_records': 50, 'workers': 2}}
FAKE_KEY = 'sk-proj-FAKEFAKEFAKEfake0123456789abcdefXYZ'


def test_every_run_notebook_has_tiny_parameters():
    assert set(list_runs()) <= set(TINY), f"add tiny parameters for: {set(list_runs()) - set(TINY)}"


@pytest.mark.parametrize('name', sorted(TINY))
def test_run_notebook(name, results_tmp, monkeypatch):
    monkeypatch.setenv('OPENAI_API_KEY', FAKE_KEY)
    monkeypatch.setenv('OPENAI_KEYS', f'{FAKE_KEY},sk-proj-SECONDfakeKEY0123456789abcdef')
    rdir = execute_run(name, TINY[name], log_to_console=False)
    rec = json.loads((rdir / 'run.json').read_text())
    assert rec['status'] == 'ok' and rec['parameters'].items() >= TINY[name].items()
    assert rec['provenance']['packages']['swebench_lab']
    assert (rdir / f'{name}.ipynb').exists() and (rdir / 'run.log').exists()
    for f in results_tmp.rglob('*'):
        if f.is_file():
            data = f.read_bytes()
            assert FAKE_KEY.encode() not in data and b'SECONDfakeKEY' not in data, f
