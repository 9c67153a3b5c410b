"""The evaluation harness on the demo benchmark with real containers (and the local backend): gold resolves everything,
empty nothing; a patch that does not apply and one that hangs are reported for what they are; official-style eval
scripts (conda activation, an offline reinstall) run as published; a run that never reached its tests has no test
output; reports are reused only for the same inputs; no container is left behind. Grading agrees with swebench's own
pipeline on real SWE-bench Verified rows. (Hostile patches: tests/test_adversarial.py; real repositories:
tests/test_real_swebench.py.)"""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DATA, DEMO_SWE, ROOT, run_cli, tagged_containers
from swebench_lab.core import read_jsonl, write_jsonl_atomic
from swebench_lab.data import load_instances
from swebench_lab.run_evaluation import evaluate_instance, run_evaluation
from swebench_lab.grading import grade, parse_log



@pytest.fixture(autouse=True)
def _results(lab_env): pass


_containers = tagged_containers


SLUG_HANG = (DATA / 'slug_hang.diff').read_text()
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
    "A patch that does not apply, and one that hangs: each reported for what it is."
    rec = load_instances(DEMO_SWE)[0]
    r = evaluate_instance(rec, NOT_APPLYING, backend, timeout=60, out_dir=tmp_path / 'na')[rec['instance_id']]
    assert (r['status'], r['patch_successfully_applied'], r['resolved']) == ('patch_not_applied', False, False)
    t0 = time.time()
    r = evaluate_instance(rec, SLUG_HANG, backend, timeout=8, out_dir=tmp_path / 'hang')[rec['instance_id']]
    assert (r['status'], r['patch_successfully_applied'], r['resolved']) == ('timed_out', True, False)
    assert time.time() - t0 < 60
    if backend == 'docker': assert _containers() == []


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
    s2 = run_evaluation(str(DEMO_SWE), 'gold', 'cache', 'gold', backend='local', progress=False)
    reports = sorted((tmp_path / 'results' / 'evaluations' / 'cache' / 'gold').glob('*/report.json'))
    assert s1['resolved_ids'] == s2['resolved_ids'] and len(reports) == 4
    assert all(json.loads(f.read_text())[f.parent.name]['backend'] == 'local' for f in reports)
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'regrade', '--dataset_name', str(DEMO_SWE),
                '--model', 'gold', '--run_id', 'cache')
    assert r.returncode == 0 and 'resolved_instances' in r.stdout and ' 4\n' in r.stdout, r.stdout + r.stderr


def test_reports_are_reused_only_for_the_same_inputs(tmp_path):
    "Another patch under the same model and run_id is graded anew; the old verdicts never count for it."
    gold = run_evaluation(str(DEMO_SWE), 'm', 'same', 'gold', backend='local', progress=False)
    assert gold['resolved_instances'] == 4
    empty = run_evaluation(str(DEMO_SWE), 'm', 'same', 'empty', backend='local', progress=False)
    assert (empty['resolved_instances'], empty['empty_patch_instances'], empty['completed_instances']) == (0, 4, 0), empty
    rep = json.loads((tmp_path / 'results' / 'evaluations' / 'same' / 'm' / 'demo__textkit-1' / 'report.json').read_text())
    assert rep['demo__textkit-1']['status'] == 'empty_patch'


def test_apply_leniency_is_counted_and_apply_swebench_refuses_it(tmp_path):
    """Gold patches without their final newline: the workbench applies them once normalised and counts each in the summary;
    `--apply swebench` (SWE-bench's chain only) does not apply them, as SWE-bench's harness would not."""
    recs = load_instances(DEMO_SWE)[:2]
    preds = [{'instance_id': r['instance_id'], 'model_name_or_path': 'cut', 'model_patch': r['patch'].rstrip('\n') if i == 0 else r['patch']}
             for i, r in enumerate(recs)]
    write_jsonl_atomic(tmp_path / 'two.jsonl', recs); write_jsonl_atomic(tmp_path / 'preds.jsonl', preds)
    ours = run_evaluation(str(tmp_path / 'two.jsonl'), 'cut', 'len', str(tmp_path / 'preds.jsonl'), backend='local', progress=False)
    assert (ours['resolved_instances'], ours['lenient_apply_instances'], ours['lenient_apply_ids']) == (2, 1, [recs[0]['instance_id']]), ours
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(tmp_path / 'two.jsonl'), '--model', 'cut',
                '--run_id', 'len', '--predictions_path', str(tmp_path / 'preds.jsonl'), '--backend', 'local', '--apply', 'swebench')
    theirs = json.loads((tmp_path / 'results' / 'evaluations' / 'len' / 'cut' / 'summary.json').read_text())
    assert (theirs['apply'], theirs['resolved_ids'], theirs['not_applied_instances']) == ('swebench', [recs[1]['instance_id']], 1), r.stdout + r.stderr
    rep = json.loads((tmp_path / 'results' / 'evaluations' / 'len' / 'cut' / recs[1]['instance_id'] / 'report.json').read_text())
    assert (rep[recs[1]['instance_id']]['apply_mode'], rep[recs[1]['instance_id']]['apply_leniency']) == ('swebench', None)


@pytest.mark.docker
def test_changing_the_backend_regrades(tmp_path):
    "A report from the local backend is not reused by a Docker run of the same predictions (the demo's old false reuse)."
    recs = load_instances(DEMO_SWE)[:1]
    write_jsonl_atomic(tmp_path / 'one.jsonl', recs)
    run_evaluation(str(tmp_path / 'one.jsonl'), 'gold', 'b', 'gold', backend='local', progress=False)
    s = run_evaluation(str(tmp_path / 'one.jsonl'), 'gold', 'b', 'gold', backend='docker', progress=False)
    rep = json.loads((tmp_path / 'results' / 'evaluations' / 'b' / 'gold' / recs[0]['instance_id'] / 'report.json').read_text())
    assert s['resolved_instances'] == 1 and rep[recs[0]['instance_id']]['backend'] == 'docker'
    assert rep[recs[0]['instance_id']]['image'].startswith('swebench-lab/inst:')


OFFICIAL_STYLE = ("source /opt/miniconda3/bin/activate\nconda activate testbed\ncd /testbed\n"
                  "python -m pip install -e .\n")


def _official(rec: dict, test_patch: str | None = None) -> dict:
    "A demo record whose eval script looks like SWE-bench's published ones: conda activation, then a reinstall."
    script = rec['eval_script'].replace('cd /testbed\n', OFFICIAL_STYLE, 1)
    if test_patch is not None:
        script = script.replace(rec['test_patch'].rstrip('\n'), test_patch.rstrip('\n'), 1)
    return {**rec, 'eval_script': script}


@pytest.mark.docker
@pytest.mark.parametrize('backend', ['docker', 'local'])
def test_official_style_scripts_run_as_published(backend, tmp_path):
    "Conda activation lines and the reinstall run unmodified (no network in Docker); gold resolves, empty does not."
    rec = _official(load_instances(DEMO_SWE)[0])
    g = evaluate_instance(rec, rec['patch'], backend, timeout=300, out_dir=tmp_path / 'g')[rec['instance_id']]
    log = (tmp_path / 'g' / 'test_output.log').read_text()
    assert g['resolved'] and g['status'] == 'graded', log[-3000:]
    assert 'Successfully installed textkit' in log and 'syntax error' not in log
    assert (tmp_path / 'g' / 'eval.sh').read_text() == rec['eval_script']          # run as given
    u = evaluate_instance(rec, None, backend, timeout=300, out_dir=tmp_path / 'u', run_unpatched=True)[rec['instance_id']]
    assert (u['status'], u['resolved']) == ('graded', False)


BUMP = """diff --git a/pyproject.toml b/pyproject.toml
--- a/pyproject.toml
+++ b/pyproject.toml
@@ -5,3 +5,3 @@ build-backend = "setuptools.build_meta"
 name = "textkit"
-version = "0.1.0"
+version = "0.2.0"
 requires-python = ">=3.8"
"""
VERSION_TEST = """diff --git a/tests/test_version.py b/tests/test_version.py
new file mode 100644
--- /dev/null
+++ b/tests/test_version.py
@@ -0,0 +1,5 @@
+from importlib.metadata import version
+
+
+def test_installed_version():
+    assert version("textkit") == "0.2.0"
"""


@pytest.mark.docker
def test_a_patch_to_packaging_metadata_is_installed_offline(tmp_path):
    "The reinstall step of an official-style script installs the patched package in a sandbox with no internet."
    base = load_instances(DEMO_SWE)[0]
    rec = {**_official(base, VERSION_TEST), 'test_patch': VERSION_TEST,
           'FAIL_TO_PASS': ['tests/test_version.py::test_installed_version'], 'PASS_TO_PASS': []}
    rec['eval_script'] = rec['eval_script'].replace('tests/test_slug.py', 'tests/test_version.py')
    r = evaluate_instance(rec, BUMP, 'docker', timeout=300, out_dir=tmp_path / 'bump')[rec['instance_id']]
    log = (tmp_path / 'bump' / 'test_output.log').read_text()
    assert r['resolved'], log[-3000:]
    assert 'Successfully installed textkit-0.2.0' in log
    u = evaluate_instance(rec, None, 'docker', timeout=300, out_dir=tmp_path / 'u', run_unpatched=True)[rec['instance_id']]
    assert u['resolved'] is False and u['status'] == 'graded'


@pytest.mark.docker
def test_a_run_that_never_reached_its_tests_has_no_test_output(tmp_path):
    "An eval script that dies before the tests: 'no test output', an error in the summary, never applied-and-unresolved."
    recs = [{**r, 'eval_script': r['eval_script'].replace(": '>>>>> Start Test Output'", "exit 3\n: '>>>>> Start Test Output'")}
            for r in load_instances(DEMO_SWE)[:2]]
    write_jsonl_atomic(tmp_path / 'broken.jsonl', recs)
    s = run_evaluation(str(tmp_path / 'broken.jsonl'), 'gold', 'nto', 'gold', progress=False)
    assert (s['no_test_output_instances'], s['error_instances'], s['completed_instances'], s['resolved_instances']) == (2, 2, 0, 0), s
    rep = json.loads((tmp_path / 'results' / 'evaluations' / 'nto' / 'gold' / recs[0]['instance_id'] / 'report.json').read_text())
    assert rep[recs[0]['instance_id']]['patch_successfully_applied'] is False


@pytest.mark.docker
def test_instance_images_keep_artefacts_out_of_diffs_and_later_commits_out_of_reach(tmp_path):
    "One pattern per line in .git/info/exclude; build artefacts do not dirty the tree; only the base commit's past is there."
    from swebench_lab.images import EXCLUDES
    from swebench_lab.recipes import InstanceSpec
    from swebench_lab.sandbox import open_sandbox
    rec = load_instances(DEMO_SWE)[0]
    with open_sandbox(InstanceSpec.from_record(rec), 'docker') as box:
        r = box.run('tail -n %d .git/info/exclude; mkdir -p build x.egg-info && touch build/a x.egg-info/b a.pyc; '
                    'echo STATUS; git status --porcelain; echo REFS; git for-each-ref; git log --all --format=%%H | head -1' % len(EXCLUDES))
    excl, rest = r.output.split('STATUS\n')
    status, refs = rest.split('REFS\n')
    assert excl.splitlines() == EXCLUDES
    assert status.strip() == ''
    assert refs.strip().splitlines() == [rec['base_commit']]             # no branch, no tag: HEAD is the base commit
    assert _containers() == []


def test_gold_needs_no_model_name():
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE),
                '--predictions_path', 'gold', '--backend', 'local', '--max_workers', '2')
    assert r.returncode == 0, r.stderr
    assert 'evaluations/demo-swebench/gold' in r.stdout


def test_bad_recipes_are_errors_naming_the_file(tmp_path):
    "A repository with no recipe, or a version key YAML read as a number: an error naming the file, no default recipe."
    rec = {**load_instances(DEMO_SWE)[0], 'repo': 'nobody/nothing', 'instance_id': 'nobody__nothing-1'}
    write_jsonl_atomic(tmp_path / 'x.jsonl', [rec])
    s = run_evaluation(str(tmp_path / 'x.jsonl'), 'gold', 'r', 'gold', backend='local', progress=False)
    assert s['error_ids'] == ['nobody__nothing-1'] and 'no recipe for nobody/nothing' in s['errors']['nobody__nothing-1']
    envs = tmp_path / 'envs'; envs.mkdir()
    (envs / 'demo__textkit.yaml').write_text('0.10:\n  python: "3.11"\n')
    r = run_cli(sys.executable, '-m', 'swebench_lab.environments', 'build', '--dataset_name', str(DEMO_SWE),
                env={'SWEBENCH_LAB_CRAWLED_DATA': str(tmp_path)})
    assert r.returncode == 1 and 'demo__textkit.yaml' in r.stdout and 'quote' in r.stdout, r.stdout + r.stderr


@pytest.mark.quick
def test_the_local_backend_refuses_a_python_this_host_lacks(tmp_path):
    rec = load_instances(DEMO_SWE)[0]
    envs = tmp_path / 'envs'; envs.mkdir()
    (envs / 'demo__textkit.yaml').write_text('"0.1":\n  python: "3.4"\n  pip: [pytest]\n  install: ""\n')
    import shutil
    if shutil.which('python3.4'): pytest.skip('this host has Python 3.4')
    from swebench_lab.recipes import InstanceSpec, RecipeError
    from swebench_lab.sandbox import LocalSandbox
    with pytest.raises(RecipeError, match='needs Python 3.4'):
        LocalSandbox(InstanceSpec.from_record(rec, envs_dir=envs))


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


@pytest.mark.quick
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


NESTED_TESTS = '''import subprocess
import sys


def test_nested(tmp_path):
    "Runs pytest on a failing inner test and prints its output (with -rA it lands in the PASSES section)."
    (tmp_path / "test_inner.py").write_text("def test_x():\\n    assert 0\\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", str(tmp_path)], capture_output=True, text=True)
    print(r.stdout)
    assert "1 failed" in r.stdout


def test_plain():
    assert True
'''


@pytest.mark.quick
def test_nested_pytest_output_is_graded_like_swebench(tmp_path):
    "A real log whose tests print a nested pytest session (summary and all): the outer run's statuses decide, as in swebench."
    from swebench_lab.grading import START, END, swebench_agreement
    proj = tmp_path / 'proj'; proj.mkdir()
    (proj / 'test_outer.py').write_text(NESTED_TESTS)
    r = subprocess.run(['bash', '-c', f"set -x; : '{START}'; {sys.executable} -m pytest -rA -p no:cacheprovider test_outer.py; : '{END}'"],
                       cwd=proj, capture_output=True, text=True)
    log = r.stdout + r.stderr
    assert log.count('short test summary info') == 2 and re.search(r'^FAILED \S*test_inner.py::test_x', log, re.M), log
    (tmp_path / 'test_output.log').write_text(log)
    rec = {**load_instances(DEMO_SWE)[0], 'instance_id': 'nested__outer-1', 'log_parser': 'parse_log_pytest',
           'FAIL_TO_PASS': ['test_outer.py::test_nested'], 'PASS_TO_PASS': ['test_outer.py::test_plain']}
    a = swebench_agreement(rec, tmp_path / 'test_output.log')
    assert a['agree'] and a['ours_resolved'] and a['swebench_resolved'], a


@pytest.mark.docker
def test_a_python_debian_lacks_comes_from_this_host(tmp_path, monkeypatch):
    "A recipe asking for a Python no Debian suite here ships (3.10, say) gets a base image with this host's installation of it."
    from swebench_lab.recipes import DISTROS, InstanceSpec, host_python_prefix
    from swebench_lab.sandbox import open_sandbox
    ver = next((v for v in ('3.10', '3.12', '3.8') if v not in DISTROS and host_python_prefix(v)), None)
    if ver is None: pytest.skip("no host Python outside Debian's (pyenv) here")
    crawled = tmp_path / 'crawled'
    (crawled / 'envs').mkdir(parents=True)
    (crawled / 'repos').symlink_to(ROOT / 'crawled_data' / 'repos')
    (crawled / 'envs' / 'demo__textkit.yaml').write_text(f'"0.1":\n  python: "{ver}"\n  pip: [pytest==8.3.5]\n  install: ""\n')
    monkeypatch.setenv('SWEBENCH_LAB_CRAWLED_DATA', str(crawled))
    rec = load_instances(DEMO_SWE)[0]
    with open_sandbox(InstanceSpec.from_record(rec), 'docker') as box:
        assert box.run('python -c "import sys; print(\'%d.%d\' % sys.version_info[:2])"').output.strip() == ver
    r = evaluate_instance(rec, rec['patch'], 'docker', timeout=300, out_dir=tmp_path / 'g')[rec['instance_id']]
    assert r['resolved'], (tmp_path / 'g' / 'test_output.log').read_text()[-2000:]
