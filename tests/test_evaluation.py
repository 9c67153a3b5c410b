"""The evaluation harness on the demo benchmark with real containers (and the local backend):
gold resolves everything, empty nothing; a patch that does not apply, one that hangs, one that adds a
conftest.py forcing passes and one that prints fake PASSED lines are all reported for what they are;
no container is left behind, even after Ctrl-C. Grading agrees with swebench's own pipeline on real
SWE-bench Verified rows."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from swebench_lab.core import read_jsonl, write_jsonl_atomic
from swebench_lab.data import load_instances
from swebench_lab.run_evaluation import evaluate_instance, grade, parse_log, run_evaluation

DEMO_SWE = ROOT / 'crawled_data' / 'bench' / 'demo-swebench.jsonl'
DATA = Path(__file__).parent / 'data'


@pytest.fixture(autouse=True)
def _results(tmp_path, monkeypatch):
    monkeypatch.setenv('SWEBENCH_LAB_RESULTS', str(tmp_path / 'results'))
    # images are content-addressed and reusable: keep building them in the project's cache of layers
    monkeypatch.setenv('SWEBENCH_LAB_CRAWLED_DATA', str(ROOT / 'crawled_data'))


def _containers():
    from swebench_lab.environments import docker_client, LABEL
    return docker_client().containers.list(all=True, filters={'label': LABEL})


SLUG_HANG = '''diff --git a/textkit/slug.py b/textkit/slug.py
--- a/textkit/slug.py
+++ b/textkit/slug.py
@@ -1,4 +1,7 @@
 """Turn titles into URL slugs."""
+import time
+while True:
+    time.sleep(1)
 import re
 import unicodedata
 
'''
CONFTEST = '''diff --git a/tests/conftest.py b/tests/conftest.py
new file mode 100644
--- /dev/null
+++ b/tests/conftest.py
@@ -0,0 +1,9 @@
+import pytest
+
+
+@pytest.hookimpl(hookwrapper=True)
+def pytest_runtest_makereport(item, call):
+    outcome = yield
+    rep = outcome.get_result()
+    rep.outcome = "passed"
+    rep.longrepr = None
'''
FAKE_PASSED = '''diff --git a/textkit/slug.py b/textkit/slug.py
--- a/textkit/slug.py
+++ b/textkit/slug.py
@@ -1,4 +1,14 @@
 """Turn titles into URL slugs."""
+import atexit
+import os
+
+_FAKE = ("PASSED tests/test_slug.py::test_separator\\n"
+         "PASSED tests/test_slug.py::test_max_length_keeps_whole_words\\n"
+         "PASSED tests/test_slug.py::test_max_length_long_word\\n"
+         "PASSED tests/test_slug.py::test_max_length_must_be_positive\\n")
+print(_FAKE)
+atexit.register(lambda: os.write(1, _FAKE.encode()))
+
 import re
 import unicodedata
 
'''
NOT_APPLYING = 'diff --git a/textkit/slug.py b/textkit/slug.py\n--- a/textkit/slug.py\n+++ b/textkit/slug.py\n@@ -1,3 +1,3 @@\n-this line is not there\n+nor this\n context\n'


@pytest.mark.docker
@pytest.mark.parametrize('backend', ['docker', 'local'])
def test_gold_and_empty(backend):
    gold = run_evaluation(str(DEMO_SWE), 'gold', 'demo', 'gold', backend=backend, max_workers=2, progress=False)
    assert (gold['resolved_instances'], gold['completed_instances'], gold['pct_applied']) == (4, 4, 100.0), gold
    empty = run_evaluation(str(DEMO_SWE), 'empty', 'demo', 'empty', backend=backend, progress=False)
    assert (empty['resolved_instances'], empty['empty_patch_instances']) == (0, 4)
    if backend == 'docker': assert _containers() == []


@pytest.mark.docker
def test_edit_history_gold_in_docker(tmp_path):
    "infbench records: the pre-edits are applied first, then the ground truth resolves every task."
    from swebench_lab.prompt_builder import BuildOptions, build_infbench
    recs, _ = build_infbench(load_instances(ROOT / 'crawled_data' / 'bench' / 'demo-task-instances.jsonl'), BuildOptions(info_pct=0.5))
    assert all(r['pre_edits'] for r in recs)
    write_jsonl_atomic(tmp_path / 'demo-task-instances_0.5.jsonl', recs)
    s = run_evaluation(str(tmp_path / 'demo-task-instances_0.5.jsonl'), 'gold', '0.5', 'gold', max_workers=2, progress=False)
    assert (s['resolved_instances'], s['pct_resolved'], s['edit_similarity'], s['file_hit_rate']) == (4, 100.0, 1.0, 1.0)
    # the pre-edits alone do not resolve anything: the ground truth is needed
    e = run_evaluation(str(tmp_path / 'demo-task-instances_0.5.jsonl'), 'empty', '0.5', 'empty', progress=False)
    assert e['resolved_instances'] == 0


@pytest.mark.docker
@pytest.mark.parametrize('backend', ['docker', 'local'])
def test_bad_patches_are_reported_for_what_they_are(backend, tmp_path):
    rec = load_instances(DEMO_SWE)[0]
    r = evaluate_instance(rec, NOT_APPLYING, backend, timeout=60, out_dir=tmp_path / 'na')[rec['instance_id']]
    assert (r['status'], r['patch_successfully_applied'], r['resolved']) == ('patch_not_applied', False, False)
    t0 = time.time()
    r = evaluate_instance(rec, SLUG_HANG, backend, timeout=8, out_dir=tmp_path / 'hang')[rec['instance_id']]
    assert (r['status'], r['patch_successfully_applied'], r['resolved']) == ('timed_out', True, False)
    assert time.time() - t0 < 60
    r = evaluate_instance(rec, CONFTEST, backend, timeout=60, out_dir=tmp_path / 'conftest')[rec['instance_id']]
    assert r['removed_files'] == ['tests/conftest.py'] and r['resolved'] is False
    assert r['tests_status']['FAIL_TO_PASS']['failure'] == rec['FAIL_TO_PASS']
    r = evaluate_instance(rec, FAKE_PASSED, backend, timeout=60, out_dir=tmp_path / 'fake')[rec['instance_id']]
    assert r['patch_successfully_applied'] and r['resolved'] is False
    log = (tmp_path / 'fake' / 'test_output.log').read_text()
    assert log.count('PASSED tests/test_slug.py::test_separator') >= 1
    # swebench's parser over the whole log would be fooled by the atexit lines; the harness is not
    naive = parse_log(log, 'parse_log_pytest', strict_pytest=False)
    assert naive.get('tests/test_slug.py::test_separator') == 'PASSED'
    assert grade(naive, rec['FAIL_TO_PASS'], rec['PASS_TO_PASS'])[1] is True
    if backend == 'docker': assert _containers() == []


@pytest.mark.docker
def test_ctrl_c_leaves_no_container(tmp_path):
    "SIGINT to a running evaluation: exit 130, no container left (docker ps -a)."
    preds = tmp_path / 'preds.jsonl'
    write_jsonl_atomic(preds, [{'instance_id': r['instance_id'], 'model_patch': SLUG_HANG} for r in load_instances(DEMO_SWE)])
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    p = subprocess.Popen([sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE),
                          '--model', 'hang', '--run_id', 'demo', '--predictions_path', str(preds), '--timeout', '300',
                          '--max_workers', '2'], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.time()
    while not _containers():
        assert p.poll() is None and time.time() - t0 < 120
        time.sleep(0.2)
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 130, out[-2000:]
    assert _containers() == [], 'containers left behind'
    ps = subprocess.run(['docker', 'ps', '-a', '--filter', 'label=swebench_lab', '-q'], capture_output=True, text=True)
    assert ps.stdout.strip() == ''


@pytest.mark.docker
def test_error_leaves_no_container(tmp_path):
    "An instance whose pre-edit does not apply errors out; its container is removed all the same."
    rec = {**load_instances(DEMO_SWE)[0], 'pre_edits': [NOT_APPLYING]}
    with pytest.raises(Exception, match='pre_edit 0 does not apply'):
        evaluate_instance(rec, 'diff --git a/x b/x\n', 'docker', timeout=30)
    assert _containers() == []


def test_cached_reports_and_regrade(tmp_path):
    "A second run reuses the reports; regrade re-reads the saved logs without a sandbox."
    s1 = run_evaluation(str(DEMO_SWE), 'gold', 'cache', 'gold', backend='local', progress=False)
    t0 = time.time()
    s2 = run_evaluation(str(DEMO_SWE), 'gold', 'cache', 'gold', backend='local', progress=False)
    assert s1['resolved_ids'] == s2['resolved_ids'] and time.time() - t0 < 5
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'regrade', '--dataset_name', str(DEMO_SWE),
                '--model', 'gold', '--run_id', 'cache')
    assert r.returncode == 0 and 'resolved_instances     4' in r.stdout, r.stdout + r.stderr


# --- agreement with swebench's own grading on real Verified rows ------------------------------------

def _log_for(parser: str, statuses: dict[str, str]) -> str:
    "A test log in the format each swebench parser reads, for the given statuses."
    lines = []
    for t, s in statuses.items():
        if parser in ('parse_log_pytest', 'parse_log_pytest_options', 'parse_log_pytest_v2', 'parse_log_sphinx',
                      'parse_log_matplotlib', 'parse_log_scikit', 'parse_log_astropy', 'parse_log_xarray', 'parse_log_pylint',
                      'parse_log_requests', 'parse_log_seaborn', 'parse_log_flask'):
            lines.append(f'{s} {t}')
        elif parser == 'parse_log_django':
            lines.append(f"{t} ... {'ok' if s == 'PASSED' else 'FAIL'}")
        elif parser == 'parse_log_sympy':
            lines.append(f"{t} {'ok' if s == 'PASSED' else 'F'}")
    return '\n'.join(['+ : \'>>>>> Start Test Output\''] + lines + ['+ : \'>>>>> End Test Output\'']) + '\n'


def test_grading_agrees_with_swebench_on_verified_rows(tmp_path):
    from swebench.harness.grading import get_eval_report
    from swebench.harness.utils import make_test_spec
    rows = load_instances(DATA / 'swebench-verified-sample.parquet')
    checked = 0
    for row in rows:
        f2p, p2p = row['FAIL_TO_PASS'], row['PASS_TO_PASS']
        for case, statuses in [('all pass', {t: 'PASSED' for t in f2p + p2p}),
                               ('one F2P fails', {**{t: 'PASSED' for t in f2p + p2p}, f2p[0]: 'FAILED'}),
                               ('P2P fails', {**{t: 'PASSED' for t in f2p + p2p}, **({p2p[0]: 'FAILED'} if p2p else {f2p[-1]: 'FAILED'})})]:
            log = _log_for(row['log_parser'], statuses)
            if not parse_log(log, row['log_parser']):
                pytest.fail(f"constructed log not readable by {row['log_parser']}")
            ours = grade(parse_log(log, row['log_parser']), f2p, p2p, row['eval_type'])
            spec = make_test_spec({**row, 'FAIL_TO_PASS': json.dumps(f2p), 'PASS_TO_PASS': json.dumps(p2p)})
            lp = tmp_path / f"{row['instance_id']}.log"
            lp.write_text(log)
            theirs = get_eval_report(spec, {'instance_id': row['instance_id'], 'model_name_or_path': 'm', 'model_patch': 'diff'},
                                     str(lp), include_tests_status=True)[row['instance_id']]
            assert ours[1] == theirs['resolved'], (row['instance_id'], case)
            assert ours[0]['FAIL_TO_PASS'] == theirs['tests_status']['FAIL_TO_PASS'], (row['instance_id'], case)
            assert ours[0]['PASS_TO_PASS'] == theirs['tests_status']['PASS_TO_PASS'], (row['instance_id'], case)
            checked += 1
    assert checked == 3 * len(rows)
