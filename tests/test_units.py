"""The quick tier's own checks: in-process, no container, no server, no subprocess beyond git. Predictions loading, the
runner record and its cross-check against a log, recipes, patch policing, the one driver, the config loader and the paired
statistics, each against an answer worked out independently (scipy, statsmodels, enumeration, or by hand)."""
import json
import math
import threading
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import pytest

from conftest import DEMO_SWE
from swebench_lab.core import SwebenchLabError, load_config
from swebench_lab.data import filter_instances, gold_patch, load_instances

pytestmark = pytest.mark.quick


# --- predictions ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,text,expected', [
    ('a.jsonl', '{"instance_id": "x", "model_patch": 5}\n', 'a.jsonl:1: x: model_patch must be a string'),
    ('b.json', '{"x": 3}', "b.json: ['x']: expected an object with model_patch"),
    ('c.json', '[{"model_patch": "p"}]', 'c.json: [0]: instance_id must be a non-empty string'),
    ('d.jsonl', '{"instance_id": "x", "model_patch": "p"}\n{"instance_id": "x", "model_patch": "q"}\n',
     'd.jsonl:2: x: a second prediction with a different patch (the first is at'),
    ('e.jsonl', '{"instance_id": "x", "model_patch": ["a", 3]}\n', 'x: model_patch is a list, but not of strings'),
    ('f.json', '{"broken": ', 'f.json:1: invalid JSON'),
])
def test_bad_predictions_name_file_place_and_problem(tmp_path, name, text, expected):
    from swebench_lab.run_evaluation import PredictionsError, load_predictions
    (tmp_path / name).write_text(text)
    with pytest.raises(PredictionsError) as e: load_predictions(tmp_path / name)
    assert expected in str(e.value) and '\n' not in str(e.value)


def test_predictions_in_every_accepted_shape_load_the_same(tmp_path):
    from swebench_lab.run_evaluation import load_predictions
    rows = [{'instance_id': 'a', 'model_patch': 'p1', 'model_name_or_path': 'm'}, {'instance_id': 'b', 'model_patch': None}]
    (tmp_path / 'l.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    (tmp_path / 'l.json').write_text(json.dumps(rows))
    (tmp_path / 'd.json').write_text(json.dumps({r['instance_id']: r for r in rows}))
    (tmp_path / 'n.jsonl').write_text(json.dumps({'instance_id': 'a', 'model_patch': ['p1', 'p2']}) + '\n{"instance_id": "b"}\n')
    notes = {}
    assert [load_predictions(tmp_path / f) for f in ('l.jsonl', 'l.json', 'd.json')] == [{'a': 'p1', 'b': None}] * 3
    assert load_predictions(tmp_path / 'n.jsonl', notes) == {'a': 'p1', 'b': None} and notes == {'no_model_patch_ids': ['b']}


def test_instance_filter_and_gold_patch():
    recs = load_instances(DEMO_SWE)
    ids = [r['instance_id'] for r in recs]
    assert [r['instance_id'] for r in filter_instances(recs, ids[::-1][:2])] == ids[2:]          # the dataset's order
    with pytest.raises(SwebenchLabError, match='--instance_ids not in demo: nope'): filter_instances(recs, ['nope'], 'demo')
    assert gold_patch(recs[0]) == recs[0]['patch'] and gold_patch({'ground_truth': '', 'patch': 'p'}) == ''


# --- the runner's record and the cross-check -----------------------------------------------------------------------

def _record(*events) -> str:
    return '\n'.join(json.dumps(e) for e in [{'event': 'start', 'pid': 1}, *events, {'event': 'finish', 'exitstatus': 0}]) + '\n'

def _call(nodeid, outcome, raised=None):
    return [{'nodeid': nodeid, 'when': 'raw-call', 'raised': raised},
            {'nodeid': nodeid, 'rel': nodeid, 'when': 'call', 'outcome': outcome, 'xfail': False}]


def test_a_log_that_lies_about_a_test_is_tampered():
    "The log says both tests passed; the runner saw one fail, and one test report 'passed' although its call raised."
    from swebench_lab.grading import cross_check, parser_for, read_record
    _, fn = parser_for('parse_log_pytest')
    log_map = {'t.py::a': 'PASSED', 't.py::b': 'PASSED', 't.py::c': 'PASSED'}
    rec = _record(*_call('t.py::a', 'passed'), *_call('t.py::b', 'failed'), *_call('t.py::c', 'passed', raised='AssertionError'))
    assert read_record(rec, fn)['passes'] == {'t.py::a': 'PASSED'}
    assert cross_check(log_map, rec, fn, ['t.py::a', 't.py::b', 't.py::c'])[:2] == ('tampered', ['t.py::b', 't.py::c'])
    assert cross_check(log_map, rec, fn, ['t.py::a']) == ('agree', [], [])
    assert cross_check(log_map, None, fn, ['t.py::a']) == ('unavailable', [], [])
    assert cross_check(log_map, _record(), fn, ['t.py::a'])[0] == 'tampered'        # a test the runner never ran


def test_a_forged_record_cannot_add_a_pass():
    "Events appended after the session, a second forged session, a cut record or a changed runner: none confirms a pass."
    from swebench_lab.grading import cross_check, parser_for
    _, fn = parser_for('parse_log_pytest')
    log_map = {'t.py::b': 'PASSED'}
    real = _record(*_call('t.py::b', 'failed'))
    forged_session = _record(*_call('t.py::b', 'passed'))
    assert cross_check(log_map, real + forged_session, fn, ['t.py::b'])[:2] == ('tampered', ['t.py::b'])   # any failure sticks
    tail = json.dumps(_call('t.py::b', 'passed')[1]) + '\n'
    state, bad, why = cross_check(log_map, real + tail, fn, ['t.py::b'])
    assert (state, bad) == ('tampered', ['t.py::b']) and 'outside any pytest session' in why[0]
    ok = _record(*_call('t.py::b', 'passed'))
    assert cross_check(log_map, ok, fn, ['t.py::b'])[0] == 'agree'
    assert cross_check(log_map, ok, fn, ['t.py::b'], complete=False)[0] == 'tampered'
    assert cross_check(log_map, ok, fn, ['t.py::b'], runner_changed=True)[0] == 'tampered'
    hollow = _record({'nodeid': 't.py::b', 'when': 'origin', 'origin': "the test's code comes from pkg/x.py", 'kind': 'foreign', 'file': 'pkg/x.py'}, *_call('t.py::b', 'passed'))
    assert cross_check(log_map, hollow, fn, ['t.py::b'])[:2] == ('tampered', ['t.py::b'])


def test_grade_log_marks_tampering_and_grades_exit_codes():
    from swebench_lab.grading import END, START, grade_log
    rec = {'instance_id': 'x', 'repo': 'demo/textkit', 'FAIL_TO_PASS': ['t.py::a'], 'PASS_TO_PASS': [], 'log_parser': 'parse_log_pytest'}
    log = f"+ : '{START}'\nPASSED t.py::a\n======== 1 passed in 0.01s ========\n+ : '{END}'\n"
    assert grade_log(rec, log, _record(*_call('t.py::a', 'passed')))['x']['resolved'] is True
    bad = grade_log(rec, log, _record(*_call('t.py::a', 'failed')))['x']
    assert (bad['status'], bad['resolved'], bad['tampered_tests']) == ('tampered', False, ['t.py::a'])
    assert grade_log({'instance_id': 'y', 'eval_type': 'exit_code'}, 'x\nOMNIGRIL_EXIT_CODE=12\n')['y']['resolved'] is False
    assert grade_log({'instance_id': 'y', 'eval_type': 'exit_code'}, 'nothing')['y']['status'] == 'no_test_output'
    # with the status the harness saw, printed lines do not decide, and a killed script is no verdict
    assert grade_log({'instance_id': 'y', 'eval_type': 'exit_code'}, 'OMNIGRIL_EXIT_CODE=0\n', exit_status=2)['y']['resolved'] is False
    assert grade_log({'instance_id': 'y', 'eval_type': 'exit_code'}, 'OMNIGRIL_EXIT_CODE=0\n', exit_status=137)['y']['status'] == 'eval_killed'


# --- recipes ---------------------------------------------------------------------------------------------------------

def test_recipes_yours_over_shipped_and_clear_errors(tmp_path):
    from swebench_lab.recipes import RecipeError, load_recipe, python_source, Recipe
    assert load_recipe('psf/requests', '2.0').python == '3.9' and load_recipe('pylint-dev/pylint', '2.15').requirements_paths == ['requirements_test.txt']
    (tmp_path / 'psf__requests.yaml').write_text('"2.0":\n  python: "3.11"\n')
    assert (load_recipe('psf/requests', '2.0', tmp_path).python, load_recipe('psf/requests', '2.3', tmp_path).python) == ('3.11', '3.9')
    for text, msg in (('1.10:\n  python: "3.9"\n', 'version key 1.1 is a float'), ('"1.10":\n  python: 3.10\n', 'quote it'),
                      ('"1.10":\n  pyhton: "3.9"\n', "unknown key 'pyhton'"), ('"1.10":\n  hosts: [a]\n', 'hosts must map host names')):
        (tmp_path / 'a__b.yaml').write_text(text)
        with pytest.raises(RecipeError, match=msg): load_recipe('a/b', '1.10', tmp_path)
    with pytest.raises(RecipeError, match='no recipe for nobody/nothing'): load_recipe('nobody/nothing', '1.0', tmp_path)
    with pytest.raises(RecipeError, match='Python 3.4 cannot be provided here'): python_source(Recipe(python='3.4', source='x'))


def test_conda_environment_files_become_pip_requirements(tmp_path):
    from swebench_lab.recipes import Recipe, resolve_env_yml
    class Repo:
        name = 'x/y'
        def read_file(self, commit, path):
            return ('name: t\ndependencies:\n  - python=3.9\n  - numpy=1.21\n  - compilers\n  - conda-forge::scipy>=1.7\n'
                    '  - pip\n  - pip:\n    - pytest==7.0\n') if path == 'environment.yml' else None
    assert resolve_env_yml(Recipe(packages='environment.yml'), Repo(), 'c').split() == ['numpy==1.21', 'scipy>=1.7', 'pytest==7.0']


# --- patch policing --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('patch,why', [
    ('diff --git a/../x b/../x\n--- a/../x\n+++ b/../x\n', 'outside the repository'),
    ('diff --git a/.git/hooks/x b/.git/hooks/x\n--- a/.git/hooks/x\n+++ b/.git/hooks/x\n', 'inside .git'),
    ('diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc/passwd\n', 'symbolic link'),
    ('--- /etc/passwd\n+++ /etc/passwd\n', 'outside the repository'),
])
def test_unsafe_patches_are_named(patch, why):
    from swebench_lab.patching import unsafe_patch
    assert why in unsafe_patch(patch)


def test_runner_reaching_lines_are_suspicious_only_outside_tests_and_runners():
    from swebench_lab.patching import suspicious_lines
    p = ('diff --git a/pkg/mod.py b/pkg/mod.py\n--- a/pkg/mod.py\n+++ b/pkg/mod.py\n@@ -1 +1,2 @@\n x = 1\n'
         '+import _pytest.reports as r\n'
         'diff --git a/tests/test_m.py b/tests/test_m.py\n--- a/tests/test_m.py\n+++ b/tests/test_m.py\n@@ -1 +1,2 @@\n x\n+import pytest\n')
    assert suspicious_lines(p, 'a/b') == ['pkg/mod.py: import _pytest.reports as r']
    assert suspicious_lines(p, 'pytest-dev/pytest') == []


def test_pytest_configuration_is_read_from_every_file_kind():
    from swebench_lab.patching import pytest_config
    assert pytest_config('setup.cfg', '[tool:pytest]\naddopts = -p evil\n') != pytest_config('setup.cfg', '[tool:pytest]\n')
    assert pytest_config('pyproject.toml', '[project]\nname = "x"\n') == ''
    assert json.loads(pytest_config('pyproject.toml', '[tool.pytest.ini_options]\naddopts = "-x"\n')) == {'ini_options': {'addopts': '-x'}}
    assert pytest_config('pyproject.toml', '[broken') is None and pytest_config('tox.ini', None) == ''


# --- the one driver --------------------------------------------------------------------------------------------------

def test_the_driver_writes_successes_and_leaves_nothing_of_failures(tmp_path):
    from swebench_lab.executors import LocalExecutor, RunGuard, drive
    seen_cancel = []
    def job(x, out_dir=None, cancel=None):
        seen_cancel.append(isinstance(cancel, threading.Event))
        (out_dir / 'f.txt').parent.mkdir(parents=True, exist_ok=True); (out_dir / 'f.txt').write_text(str(x))
        if x == 2: raise ValueError('two')
        return x
    (tmp_path / '0').mkdir(); (tmp_path / '0' / 'stale').write_text('old')
    vals, errs = {}, {}
    drive(LocalExecutor(3), job, {str(i): ((i,), {}) for i in range(4)}, 'lbl', RunGuard('lbl', 'local'),
          lambda k: (tmp_path / k, tmp_path / k), vals.__setitem__, errs.__setitem__)
    assert vals == {'0': 0, '1': 1, '3': 3} and errs == {'2': 'ValueError: two'} and all(seen_cancel)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*') if p.is_file()) == ['0/f.txt', '1/f.txt', '3/f.txt']


# --- the one config loader -------------------------------------------------------------------------------------------

def test_training_and_workflow_configs_load_the_same_way(tmp_path):
    from swebench_lab.training import TrainingError, load_config as training_config
    from swebench_lab.workflows import WorkflowError, load_workflow_config
    c = training_config('sft', overrides=['model.base_model=/m', 'data.train=/d.jsonl', 'train.learning_rate=1e-4', 'lora.r=8'])
    assert (c.train.learning_rate, c.lora.r, c.kind) == (1e-4, 8, 'sft')
    with pytest.raises(TrainingError, match="unknown key 'learnin_rate'"):
        training_config('sft', overrides=['model.base_model=/m', 'data.train=x', 'train.learnin_rate=1'])
    (tmp_path / 'w.yaml').write_text('model:\n  base_model: /m\nagent:\n  scaffold: direct\n  temprature: 0\n')
    with pytest.raises(WorkflowError, match=r"w.yaml.agent: unknown key 'temprature'"): load_workflow_config(tmp_path / 'w.yaml')
    assert load_workflow_config(model__base_model='/m', agent__max_turns=3, benchmark__dataset=None).agent.max_turns == 3


# --- statistics ------------------------------------------------------------------------------------------------------

def test_mcnemar_wilson_holm_and_pass_at_k_against_references():
    from scipy.stats import binomtest
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.proportion import proportion_confint
    from swebench_lab.analysis import holm, mcnemar_exact, pass_at_k, wilson_interval
    for b, c in ((6, 16), (0, 5), (3, 3), (10, 0)):
        assert math.isclose(mcnemar_exact(b, c), binomtest(b, b + c, 0.5).pvalue if b + c else 1.0, rel_tol=1e-9)
    for k, n in ((0, 10), (7, 20), (20, 20)):
        assert all(math.isclose(x, y, abs_tol=1e-9) for x, y in zip(wilson_interval(k, n), proportion_confint(k, n, method='wilson')))
    ps = [0.01, 0.04, 0.03, 0.5]
    assert all(math.isclose(x, y) for x, y in zip(holm(ps), multipletests(ps, method='holm')[1]))
    n, c, k = 6, 2, 3          # pass@k is the chance that a k-subset of the n samples holds a correct one: enumerate them
    subsets = list(combinations([1] * c + [0] * (n - c), k))
    assert math.isclose(pass_at_k(n, c, k), sum(any(s) for s in subsets) / len(subsets))


def test_results_index_reads_only_what_changed_and_the_cli_names_runs(tmp_path):
    import json, subprocess, sys
    from swebench_lab.results import RunIndex, list_runs, synthetic_runs
    synthetic_runs(tmp_path, 15, instances=5)
    assert len(list_runs(tmp_path)) == 15
    idx = RunIndex(tmp_path)
    assert idx.refresh()['read'] == 0                                    # the first list_runs filled the index
    m = tmp_path / 'agents' / 'exp2' / 'run_summary.json'
    s = json.loads(m.read_text()); s['reward_1'] = 0; m.write_text(json.dumps(s))
    assert idx.refresh()['read'] == 1 and int(idx.table('agents').set_index('id').loc['agents/exp2', 'resolved']) == 0
    idx.close()
    r = subprocess.run([sys.executable, '-m', 'swebench_lab.results', '--root', str(tmp_path), 'compare', 'run0/', 'run1/'],
                       capture_output=True, text=True)
    assert r.returncode == 0 and 'exact McNemar' in r.stdout and 'evaluations/run0/model-0: ' in r.stdout, r.stderr


def test_tracking_refuses_unknown_or_missing_trackers_and_tensorboard_round_trips(tmp_path):
    from swebench_lab.tracking import TrackingError, log_summary, read_scalars, report_to_list
    with pytest.raises(TrackingError, match="unknown tracker"): report_to_list('tensorbord')
    assert report_to_list('tensorboard, none'.replace(', none', '')) == ['tensorboard'] and report_to_list('none') == []
    log_summary({'resolved_instances': 3, 'nested': {'cost': 0.25}}, 'tensorboard', tmp_path, 'unit')
    assert read_scalars(tmp_path) == {'nested/cost': [(0, 0.25)], 'resolved_instances': [(0, 3.0)]}
