"""The command lines: `swebench-lab`, `python -m swebench_lab.runs`; errors are one line and exit 2."""
import json
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from conftest import BIN, ROOT, run_cli


def test_info_prints_paths(results_tmp):
    r = run_cli(str(BIN / 'swebench-lab'), 'info')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info['project_root'] == str(ROOT)
    assert info['experiment_results'] == str(results_tmp)


def test_unknown_command_is_one_line_exit_2():
    r = run_cli(str(BIN / 'swebench-lab'), 'no_such_stage')
    assert r.returncode == 2
    assert r.stderr.strip() == "error: unknown command 'no_such_stage': no module swebench_lab.no_such_stage"


def test_unknown_run_parameter_refused(results_tmp):
    r = run_cli(sys.executable, '-m', 'swebench_lab.runs', 'demo', '-p', 'topnn', '5')
    assert r.returncode == 2
    assert "has no parameter(s) topnn" in r.stderr and 'topn' in r.stderr
    assert not results_tmp.exists() or not any(results_tmp.rglob('run.json'))


def test_failing_run_fails_loudly(tmp_path, results_tmp):
    nb = new_notebook(cells=[new_code_cell('x = 1', metadata={'tags': ['parameters']}),
                             new_code_cell('print("before")'),
                             new_code_cell('raise ValueError(f"bad x={x}")')])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    path = tmp_path / 'boom.ipynb'
    nbformat.write(nb, path)
    r = run_cli(sys.executable, '-m', 'swebench_lab.runs', str(path), '-p', 'x', '7', '--quiet')
    assert r.returncode == 1
    assert 'ValueError: bad x=7' in r.stderr
    (rec_path,) = results_tmp.rglob('run.json')
    rec = json.loads(rec_path.read_text())
    assert rec['status'] == 'failed' and rec['error']['ename'] == 'ValueError' and 'bad x=7' in rec['error']['evalue']
    executed = nbformat.read(rec_path.parent / 'boom.ipynb', as_version=4)
    assert any(o.get('ename') == 'ValueError' for c in executed.cells if c.cell_type == 'code' for o in c.get('outputs', []))
