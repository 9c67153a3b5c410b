"""SWE-bench Pro graded the official way (`swebench_lab.pro`): Pro's entry script and rule, the offline images, `validate`
and `run_evaluation` on Pro rows. The demo repository's Pro-format rows run everywhere Docker does; the real Pro rows
(`tests/data/pro/`) need a clone of Pro's harness (`SWEBENCH_LAB_PRO_HARNESS`) and, for the container tests, the row's
repository in the store (`SWEBENCH_LAB_CRAWLED_DATA`), and skip with that reason where they are absent."""
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import DATA, ROOT, run_cli
from swebench_lab.pro import (HARNESS_ENV, ProHarness, as_list, entry_script, find_harness, is_pro_row, official_rule, pro_resolved,
                              strip_binary_hunks)

PRO = DATA / 'pro'
REAL_ROWS = [json.loads(l) for l in (PRO / 'rows.jsonl').read_text().splitlines() if l.strip()]
DEMO_ROWS = ROOT / 'crawled_data' / 'bench' / 'demo-pro.jsonl'
DEMO_HARNESS = ROOT / 'crawled_data' / 'SWE-bench_Pro-demo'


def real_harness() -> ProHarness:
    p = os.environ.get(HARNESS_ENV)
    if not p or not (Path(p) / 'swe_bench_pro_eval.py').exists():
        pytest.skip(f'no clone of SWE-bench Pro\'s harness: set {HARNESS_ENV} (github.com/scaleapi/SWE-bench_Pro-os)')
    return find_harness(p)


def pro_eval_module(h: ProHarness):
    "Pro's own evaluator module, imported from the harness clone (its helper_code on the path)."
    sys.path.insert(0, str(h.root))
    try:
        import importlib
        return importlib.import_module('swe_bench_pro_eval')
    finally: sys.path.remove(str(h.root))


@pytest.mark.quick
def test_real_rows_load_as_pro_and_their_outputs_grade_as_recorded():
    "The real Pro rows load as Pro rows; the output.json Pro's parser wrote for their gold and unpatched runs grade as Pro would."
    from swebench_lab.data import load_instances
    rows = load_instances(PRO / 'rows.jsonl')
    assert len(rows) == len(REAL_ROWS) >= 1 and all(is_pro_row(r) for r in rows)
    for r in REAL_ROWS:
        d = PRO / r['instance_id']
        gold, unpatched = (json.loads((d / f'{a}.output.json').read_text()) for a in ('gold', 'unpatched'))
        assert pro_resolved(gold, r['fail_to_pass'], r['pass_to_pass']), r['instance_id']
        assert not pro_resolved(unpatched, r['fail_to_pass'], r['pass_to_pass']), r['instance_id']
        # one graded test reported FAILED instead of PASSED is enough to lose the verdict
        t = as_list(r['fail_to_pass'])[0]
        worse = {'tests': [{**x, 'status': 'FAILED'} if x['name'] == t else x for x in gold['tests']]}
        assert not pro_resolved(worse, r['fail_to_pass'], r['pass_to_pass'])


@pytest.mark.quick
def test_entry_script_binary_strip_and_rule_match_pros_own_code():
    "Against Pro's swe_bench_pro_eval.py: the same entry script, the same stripped patch, the same verdict on the same files."
    h = real_harness()
    pro = pro_eval_module(h)
    cwd = os.getcwd()
    os.chdir(h.root)           # their Dockerfile readers use paths relative to the harness
    try:
        for r in REAL_ROWS:
            assert entry_script(r, h) == pro.create_entryscript(r), r['instance_id']
    finally: os.chdir(cwd)
    binary = 'diff --git a/x.png b/x.png\nindex 1..2 100644\nGIT binary patch\nliteral 5\nabc\n'
    for r in REAL_ROWS:
        for patch in (r['patch'], r['patch'] + binary, binary + r['test_patch'], ''):
            assert strip_binary_hunks(patch) == pro.strip_binary_hunks(patch)
    rule = official_rule(h)
    for r in REAL_ROWS:
        for arm in ('gold', 'unpatched'):
            out = json.loads((PRO / r['instance_id'] / f'{arm}.output.json').read_text())
            assert rule(out, r) == pro_resolved(out, r['fail_to_pass'], r['pass_to_pass']) == (arm == 'gold')


@pytest.mark.quick
def test_a_missing_harness_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(HARNESS_ENV, raising=False)
    monkeypatch.setenv('SWEBENCH_LAB_CRAWLED_DATA', str(tmp_path))
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_ROWS),
                '--predictions_path', 'gold', '--pro_harness', str(tmp_path / 'nowhere'))
    assert r.returncode != 0 and 'no SWE-bench Pro harness' in r.stderr + r.stdout and 'SWE-bench_Pro-os' in r.stderr + r.stdout


@pytest.mark.docker
def test_validate_demo_pro_rows(results_tmp):
    "Pro-format rows of the demo repository: images from Pro-style Dockerfiles built offline; gold passes, unpatched fails."
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'validate', '--dataset_name', str(DEMO_ROWS),
                '--pro_harness', str(DEMO_HARNESS), '--max_workers', '2', timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    v = json.loads(next(results_tmp.rglob('validation.json')).read_text())
    assert v['valid'] == v['total'] == 4, v['verdicts']
    d = next(results_tmp.rglob('gold'))
    for row in v['instances']:
        files = d / row['instance_id']
        for name in ('report.json', 'output.json', 'stdout.log', 'stderr.log', 'entryscript.sh', 'run_script.sh', 'parser.py'):
            assert (files / name).exists(), (row['instance_id'], name)
        rep = json.loads((files / 'report.json').read_text())[row['instance_id']]
        assert rep['grading'] == 'swebench_pro' and rep['resolved'] and rep['patch_successfully_applied']


@pytest.mark.docker
def test_a_patch_that_rewrites_the_graded_tests_cannot_pass(results_tmp, tmp_path, monkeypatch):
    """Pro checks the graded test files out of the fix commit after the patch: a patch that rewrites them so that every
    graded test passes trivially is graded on the real tests, and loses; the gold patch on the same row wins."""
    import difflib
    from swebench_lab.core import write_jsonl_atomic
    from swebench_lab.data import load_instances
    from swebench_lab.repos import RepoStore
    from swebench_lab.run_evaluation import run_evaluation
    row = load_instances(DEMO_ROWS)[0]
    test_file = as_list(row['selected_test_files_to_run'])[0]
    old = RepoStore().get(row['repo']).read_file(row['base_commit'], test_file)
    names = sorted({t.split('::')[1] for t in as_list(row['fail_to_pass']) + as_list(row['pass_to_pass'])})
    new = ''.join(f'def {n}():\n    pass\n\n' for n in names)
    cheat = f'diff --git a/{test_file} b/{test_file}\n' + ''.join(difflib.unified_diff(
        old.splitlines(True), new.splitlines(True), f'a/{test_file}', f'b/{test_file}'))
    preds = tmp_path / 'preds.jsonl'
    write_jsonl_atomic(preds, [{'instance_id': row['instance_id'], 'model_name_or_path': m, 'model_patch': p}
                               for m, p in (('cheat', cheat),)])
    monkeypatch.setenv(HARNESS_ENV, str(DEMO_HARNESS))
    s = run_evaluation(str(DEMO_ROWS), 'cheat', None, str(preds), 'docker', max_workers=1, instance_ids=[row['instance_id']], progress=False)
    g = run_evaluation(str(DEMO_ROWS), 'gold', None, 'gold', 'docker', max_workers=1, instance_ids=[row['instance_id']], progress=False)
    rep = json.loads(next(results_tmp.rglob(f"cheat/{row['instance_id']}/report.json")).read_text())[row['instance_id']]
    assert rep['patch_successfully_applied'] and not rep['resolved'] and rep['tests_status']['FAIL_TO_PASS']['failure'], rep
    assert s['resolved_instances'] == 0 and g['resolved_instances'] == 1


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize('iid', [r['instance_id'] for r in REAL_ROWS])
def test_validate_a_real_pro_row(iid, results_tmp):
    "A real Pro row: built offline from Pro's Dockerfiles, gold resolves, unpatched does not, and Pro's own rule agrees."
    from swebench_lab.repos import RepoStore
    h = real_harness()
    row = next(r for r in REAL_ROWS if r['instance_id'] == iid)
    try: RepoStore().get(row['repo'])
    except Exception as e: pytest.skip(f"{row['repo']} is not in the repository store here: {str(e)[:200]}")
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'validate', '--dataset_name', str(PRO / 'rows.jsonl'),
                '--instance_ids', iid, '--pro_harness', str(h.root), timeout=3000)
    v = json.loads(next(results_tmp.rglob('validation.json')).read_text())
    row = next(x for x in v['instances'] if x['instance_id'] == iid)
    assert row['verdict'] == 'valid' and row['agrees_with_pro'] is True, (row, r.stdout[-1500:])


@pytest.mark.quick
def test_rows_from_the_harness_match_the_rows_and_check_finds_a_changed_one(tmp_path):
    "`pro rows` rebuilds the demo's Pro rows from the harness and the store; `pro check` passes them and names a changed field."
    from swebench_lab.core import write_jsonl_atomic
    from swebench_lab.data import load_instances
    out = tmp_path / 'rows.jsonl'
    ids = [r['instance_id'] for r in load_instances(DEMO_ROWS)]
    r = run_cli(sys.executable, '-m', 'swebench_lab.pro', 'rows', '--ids', *ids, '--out', str(out), '--pro_harness', str(DEMO_HARNESS))
    assert r.returncode == 0, r.stdout + r.stderr
    built, given = load_instances(out), load_instances(DEMO_ROWS)
    assert [b['instance_id'] for b in built] == ids
    for b, g in zip(built, given):
        assert (b['patch'], b['test_patch'], b['before_repo_set_cmd'], b['fail_to_pass']) == (g['patch'], g['test_patch'], g['before_repo_set_cmd'], g['fail_to_pass'])
        assert b['problem_statement_source'] == 'commit_message'
    assert run_cli(sys.executable, '-m', 'swebench_lab.pro', 'check', '--dataset', str(out), '--pro_harness', str(DEMO_HARNESS)).returncode == 0
    changed = [{**built[0], 'pass_to_pass': '[]'}] + built[1:]
    write_jsonl_atomic(tmp_path / 'changed.jsonl', changed)
    r = run_cli(sys.executable, '-m', 'swebench_lab.pro', 'check', '--dataset', str(tmp_path / 'changed.jsonl'), '--pro_harness', str(DEMO_HARNESS))
    assert r.returncode == 1 and f"{ids[0]}  pass_to_pass: differs from the harness" in r.stdout


@pytest.mark.docker
def test_a_patch_that_forges_the_test_output_fools_pros_rule_but_not_the_workbench(results_tmp, tmp_path, monkeypatch):
    """Pro's parser reads what the run prints: a conftest.py that prints a PASSED line for every graded test makes Pro's rule
    say resolved (`pro_resolved`, kept as Pro's verdict) while nothing is fixed; the workbench reports it tampered, not resolved."""
    from swebench_lab.core import write_jsonl_atomic
    from swebench_lab.data import load_instances
    from swebench_lab.run_evaluation import run_evaluation
    row = load_instances(DEMO_ROWS)[0]
    tests = as_list(row['fail_to_pass']) + as_list(row['pass_to_pass'])
    body = ['import atexit, os', 'atexit.register(lambda: os.write(1, ' + repr(''.join(f'{t} PASSED\n' for t in tests).encode()) + '))']
    forge = (f"diff --git a/conftest.py b/conftest.py\nnew file mode 100644\n--- /dev/null\n+++ b/conftest.py\n@@ -0,0 +1,{len(body)} @@\n"
             + ''.join(f'+{l}\n' for l in body))
    preds = tmp_path / 'preds.jsonl'
    write_jsonl_atomic(preds, [{'instance_id': row['instance_id'], 'model_name_or_path': 'forge', 'model_patch': forge}])
    monkeypatch.setenv(HARNESS_ENV, str(DEMO_HARNESS))
    s = run_evaluation(str(DEMO_ROWS), 'forge', None, str(preds), 'docker', max_workers=1, instance_ids=[row['instance_id']], progress=False)
    rep = json.loads(next(results_tmp.rglob(f"forge/{row['instance_id']}/report.json")).read_text())[row['instance_id']]
    out = json.loads(next(results_tmp.rglob(f"forge/{row['instance_id']}/output.json")).read_text())
    assert pro_resolved(out, row['fail_to_pass'], row['pass_to_pass']) and rep['pro_resolved'], 'the forged lines should fool Pro\'s parser'
    assert rep['status'] == 'tampered' and not rep['resolved'] and rep['suspicious'] and s['resolved_instances'] == 0, rep
    from swebench_lab.run_evaluation import regrade          # grading again from the saved output.json gives the same verdict
    assert regrade(str(DEMO_ROWS), 'forge')['resolved_instances'] == 0
    again = json.loads(next(results_tmp.rglob(f"forge/{row['instance_id']}/report.json")).read_text())[row['instance_id']]
    assert (again['status'], again['resolved'], again['pro_resolved']) == ('tampered', False, True)
