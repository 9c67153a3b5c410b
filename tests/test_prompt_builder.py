"""bench -> infbench end to end on the demo benchmark's real repository, the SWE-bench mode on real
Verified/Lite rows, and the errors bad input gets (the output file is never left half-written)."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from swebench_lab.core import read_jsonl
from swebench_lab.data import load_instances
from swebench_lab.prompt_builder import split_index
from swebench_lab.repos import RepoStore, files_touched, join_diffs

DEMO = ROOT / 'crawled_data' / 'bench' / 'demo-task-instances.jsonl'
DATA = Path(__file__).parent / 'data'
SHARED = ROOT.parent / 'shared' / 'data' / 'swebench'


def pb(*args, **kw):
    return run_cli(sys.executable, '-m', 'swebench_lab.prompt_builder', *map(str, args), **kw)


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    "The demo repository, cloned from the committed bundle into a scratch mirror."
    d = tmp_path_factory.mktemp('repos')
    shutil.copy(ROOT / 'crawled_data' / 'repos' / 'demo__textkit.bundle', d)
    return RepoStore(d)


@pytest.mark.parametrize('flags,run_id', [
    (['--info-pct', '0.2'], '0.2_body_issue'),
    (['--info-pct', '0.6', '--no-pr-mes', '--no-issue-mes'], '0.6'),
    (['--info-pct', '0.2', '--no-pr-mes', '--no-issue-mes', '--use-bm25', '--topn', '3'], '0.2_bm25_3'),
    ([], 'None_body_issue'),
])
def test_cli_writes_valid_infbench(tmp_path, store, flags, run_id):
    r = pb('--dataset-name', DEMO, '--save-path', f'{tmp_path}/', '--repos-dir', store.root, *flags)
    assert r.returncode == 0, r.stderr
    out = tmp_path / f'demo-task-instances_{run_id}.jsonl'
    assert out.exists() and f'run_id {run_id}' in r.stdout
    recs = load_instances(out, kind='infbench')  # validates prompt, split_idx, pre_edits, ground_truth
    bench = {b['instance_id']: b for b in load_instances(DEMO)}
    pct = None if '--info-pct' not in flags else float(flags[flags.index('--info-pct') + 1])
    for rec in recs:
        b, repo = bench[rec['instance_id']], store.get(rec['repo'])
        steps = b['work_patch_list']
        k = split_index(len(steps), pct)
        assert rec['split_idx'] == k and len(rec['pre_edits']) == k
        assert rec['pre_edits'] == [join_diffs(s) for s in steps[:k]]
        # pre_edits then ground_truth, applied to base_commit, give exactly the final code
        final = repo.apply_diffs(b['base_commit'], [b['work_patch']])
        assert repo.apply_diffs(b['base_commit'], rec['pre_edits'] + [rec['ground_truth']]) == final
        assert set(files_touched(rec['ground_truth'])) <= set(b['files_work'])
        assert rec['ground_truth'].endswith('\n') and not rec['ground_truth'].endswith('\n\n')
        # the prompt: system line first, the history steps, the context files with line numbers
        first, rest = rec['prompt'].split('\n', 1)
        assert first.startswith('You are') and '<patch>' in rest
        assert rest.count('[start of step') == k
        assert ('<requirement>' in rest) == ('--no-pr-mes' not in flags)
        for path in rec['context_files']:
            assert f'[start of {path}]\n1 ' in rest
        if '--use-bm25' in flags:
            pre_files = [p for d in rec['pre_edits'] for p in files_touched(d)]
            assert rec['context_files'][:len(set(pre_files))] == list(dict.fromkeys(pre_files))
            assert len(rec['context_files']) <= len(set(pre_files)) + 3
        else:
            assert set(rec['context_files']) <= set(b['files_work'])


def test_swebench_mode_on_demo_records(tmp_path, store):
    src = ROOT / 'crawled_data' / 'bench' / 'demo-swebench.jsonl'
    for ctx, rid in [('oracle', 'oracle'), ('bm25', 'bm25_2')]:
        r = pb('--dataset-name', src, '--save-path', tmp_path / f'{ctx}.jsonl', '--repos-dir', store.root,
               '--context', ctx, '--topn', 2)
        assert r.returncode == 0, r.stderr
        recs = read_jsonl(tmp_path / f'{ctx}.jsonl')
        assert len(recs) == 4 and all(x['run_id'] == rid and '<issue>' in x['prompt'] for x in recs)
        if ctx == 'oracle':  # the files the gold patch edits, as they are at base_commit
            assert all(x['context_files'] == files_touched(x['patch']) for x in recs)


@pytest.mark.parametrize('src', [DATA / 'swebench-verified-sample.parquet', DATA / 'swebench-lite-sample.jsonl'])
def test_real_swebench_rows_give_prompts(tmp_path, src):
    r = pb('--dataset-name', src, '--save-path', tmp_path / 'out.jsonl', '--context', 'none')
    assert r.returncode == 0, r.stderr
    recs = read_jsonl(tmp_path / 'out.jsonl')
    assert len(recs) == 5
    for x in recs:
        assert isinstance(x['FAIL_TO_PASS'], list) and x['FAIL_TO_PASS']
        assert x['problem_statement'].strip()[:40].replace('\r', '') in x['prompt']
        assert x['eval_script'].startswith('#!/bin/bash') and x['log_parser'].startswith('parse_log_')


@pytest.mark.skipif(not SHARED.exists(), reason='../shared/data not present')
@pytest.mark.quick
def test_full_verified_and_lite_load_and_validate():
    for name, n in [('SWE-bench_Verified-test.parquet', 500), ('SWE-bench_Lite-test.parquet', 300)]:
        recs = load_instances(SHARED / name)
        assert len(recs) == n and all(r['FAIL_TO_PASS'] for r in recs)


# --- bad input: one clear line, exit 2, nothing written ----------------------------------------

def _bad_case(tmp_path, mutate):
    lines = DEMO.read_text().splitlines()
    lines = mutate(lines)
    p = tmp_path / 'bad-task-instances.jsonl'
    p.write_text('\n'.join(lines) + '\n')
    return p


def _edit(i, fn):
    def m(lines):
        rec = json.loads(lines[i]); fn(rec); lines[i] = json.dumps(rec); return lines
    return m


@pytest.mark.parametrize('mutate,expect', [
    (_edit(1, lambda r: r.pop('base_commit')),
     "bad-task-instances.jsonl:2 (instance_id demo__textkit-pull-2): field 'base_commit': missing required field"),
    (lambda ls: ls[:2] + ['{"instance_id": "x", "repo": '] + ls[2:],
     'bad-task-instances.jsonl:3: invalid JSON'),
    (_edit(2, lambda r: r['work_patch_list'][0].__setitem__(0, r['work_patch_list'][0][0].replace('\n     ws = words(text)\n', '\n     ws = wordz(text)\n'))),
     'demo__textkit-pull-3: demo/textkit: pre_edit step 0 (textkit/stats.py) does not apply'),
    (_edit(0, lambda r: r.__setitem__('repo', 'nobody/nowhere')),
     "demo__textkit-pull-1: unknown repo 'nobody/nowhere'"),
    (_edit(3, lambda r: r.__setitem__('work_patch_list', 'not a list')),
     "field 'work_patch_list': not a JSON-encoded list"),
])
def test_bad_input_is_one_clear_error(tmp_path, store, mutate, expect):
    src = _bad_case(tmp_path, mutate)
    out = tmp_path / 'out' / 'result.jsonl'
    out.parent.mkdir()
    out.write_text('{"instance_id": "previous run"}\n')
    r = pb('--dataset-name', src, '--save-path', out, '--repos-dir', store.root, '--info-pct', '0.5')
    assert r.returncode == 2, r.stderr
    err = [l for l in r.stderr.splitlines() if l.startswith('error:')]
    assert len(err) == 1 and expect in err[0], r.stderr
    assert out.read_text() == '{"instance_id": "previous run"}\n'     # untouched
    assert [p.name for p in out.parent.iterdir()] == ['result.jsonl']  # no temp litter


def test_skip_errors_writes_the_rest(tmp_path, store):
    src = _bad_case(tmp_path, _edit(0, lambda r: r.__setitem__('repo', 'nobody/nowhere')))
    out = tmp_path / 'out.jsonl'
    r = pb('--dataset-name', src, '--save-path', out, '--repos-dir', store.root, '--info-pct', '0.5', '--skip-errors')
    assert r.returncode == 0, r.stderr
    assert [x['instance_id'] for x in read_jsonl(out)] == [f'demo__textkit-pull-{i}' for i in (2, 3, 4)]
    (err,) = read_jsonl(tmp_path / 'out.jsonl.errors.jsonl')
    assert err['instance_id'] == 'demo__textkit-pull-1' and 'unknown repo' in err['error']


def test_merge_infbench_cli(tmp_path, store):
    for sub in ('a__x', 'b__y'):
        r = pb('--dataset-name', DEMO, '--save-path', tmp_path / f'{sub}-task-instances_0.2.jsonl',
               '--repos-dir', store.root, '--info-pct', '0.2', '--no-pr-mes', '--no-issue-mes')
        assert r.returncode == 0, r.stderr
    r = run_cli(sys.executable, '-m', 'swebench_lab.merge_utils', 'merge-infbench', '--run-id', '0.2', '--input-dir', str(tmp_path))
    assert r.returncode == 2 and "duplicate instance_id 'demo__textkit-pull-1'" in r.stderr
    r = run_cli(sys.executable, '-m', 'swebench_lab.merge_utils', 'merge-infbench', '--run-id', '0.2',
                '--input-dir', str(tmp_path), '--repos', 'a/x')
    assert r.returncode == 0, r.stderr
    assert len(read_jsonl(tmp_path / 'all-task-instances_0.2.jsonl')) == 4
