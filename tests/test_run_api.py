"""run_api over real HTTP: the workbench's server with two adapters, a real kill part-way and a
resume that completes the file; and a misbehaving server that exercises every retry, trim and
failure path without losing or duplicating an instance."""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from faulty_server import FaultyOpenAIServer, PATCH
from swebench_lab.core import iter_jsonl, read_jsonl, write_jsonl_atomic
from swebench_lab.models import get_model
from swebench_lab.prompt_builder import PromptParts, context_files_in
from swebench_lab.models import RetryPolicy
from swebench_lab.run_api import RunParams, run_pass
from swebench_lab.serving import serve_in_background


@pytest.fixture(scope='module')
def infbench(tmp_path_factory):
    "The demo tasks' prompts, repeated under 30 distinct ids so a run takes long enough to be killed."
    d = tmp_path_factory.mktemp('inf')
    r = run_cli(sys.executable, '-m', 'swebench_lab.prompt_builder', '--dataset-name', 'demo', '--save-path', d / 'demo.jsonl',
                '--info-pct', '0.2', env={'SWEBENCH_LAB_CRAWLED_DATA': str(ROOT / 'crawled_data')})
    assert r.returncode == 0, r.stderr
    base = read_jsonl(d / 'demo.jsonl')
    recs = [{**base[i % 4], 'instance_id': f'{base[i % 4]["instance_id"]}-copy{i}'} for i in range(30)]
    write_jsonl_atomic(d / 'demo-task-instances_0.2.jsonl', recs)
    return d / 'demo-task-instances_0.2.jsonl'


def test_kill_and_resume_with_two_adapters(tiny, infbench, tmp_path):
    results = tmp_path / 'results'
    env = {**os.environ, 'SWEBENCH_LAB_RESULTS': str(results), 'PYTHONUNBUFFERED': '1'}
    env.pop('OPENAI_KEYS', None); env.pop('OPENAI_KEY', None); env.pop('OPENAI_API_KEY', None)
    with serve_in_background(tiny['base'], f"baseline:{tiny['baseline']},trained:{tiny['trained']}",
                             log_path=tmp_path / 'server.log', extra_args=['--served-model-name', 'tiny']) as srv:
        env['BASE_URL'] = srv.base_url
        cmd = [sys.executable, '-m', 'swebench_lab.run_api', '--dataset_name', str(infbench), '--model', 'baseline', 'trained',
               '--run_id', '0.2', '--max_workers', '4', '--max_tokens', '48', '--temperature', '0']
        out = {m: results / m / 'T=0' / 'n=1' / 'demo-task-instances_0.2.jsonl' for m in ('baseline', 'trained')}
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        t0 = time.time()
        while not (out['baseline'].exists() and len(out['baseline'].read_text().splitlines()) >= 6):
            assert p.poll() is None, p.stdout.read().decode()[-3000:]
            assert time.time() - t0 < 240, 'no progress'
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL); p.wait()
        partial = [r['instance_id'] for r in iter_jsonl(out['baseline'])]
        assert 6 <= len(partial) < 30, len(partial)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert 'resumed' in r.stdout and 'trained' in r.stdout
    for m, path in out.items():
        recs = read_jsonl(path)
        ids = [x['instance_id'] for x in recs]
        assert len(ids) == len(set(ids)) == 30, (m, Counter(ids).most_common(3))
        assert all(x['status'] == 'ok' and x['model_name'] == m and isinstance(x['model_patch'], str) for x in recs)
        assert all(x['usage']['completion_tokens'] > 0 and x['response_time'] > 0 and x['cost'] == 0 for x in recs)
    kept = read_jsonl(out['baseline'])[:len(partial)]
    assert [x['instance_id'] for x in kept] == partial  # the records written before the kill are untouched


def _faulty_records():
    files = [('a.py', 'x = 1\n' * 5), ('b.py', 'y = 2\n' * 5), ('c.py', 'z = 3\n')]
    faults = ['none', 'ratelimit', 'server', 'stall', 'context', 'malformed', 'emptybody', 'always500', 'badrequest']
    recs = []
    for f in faults:
        prompt = PromptParts('requirement', f'[[fault:{f}]] [[id:{f}]] fix it', [], list(files)).render()
        recs.append({'instance_id': f, 'prompt': prompt, 'run_id': 't'})
    return recs


def test_misbehaving_server(tmp_path):
    recs = _faulty_records()
    out = tmp_path / 'flaky' / 'out.jsonl'
    out.parent.mkdir()
    params = RunParams(temperature=0, top_p=1, timeout=1.0, retry=RetryPolicy(max_retries=3, base=0.05, cap=0.2))
    with FaultyOpenAIServer(stall_s=3) as srv:
        spec = get_model('flaky', base_url=srv.base_url)
        assert spec.context_limit == 100000
        s = run_pass(recs, spec, params, out, srv.base_url, max_workers=4, run_id='t', progress=False)
        byid = {r['instance_id']: r for r in read_jsonl(out)}
        assert sorted(byid) == sorted(r['instance_id'] for r in recs) and len(read_jsonl(out)) == len(recs)
        assert (s.ok, s.failed) == (7, 2)
        for iid in ('none', 'ratelimit', 'server', 'stall', 'context', 'malformed', 'emptybody'):
            assert byid[iid]['status'] == 'ok' and byid[iid]['model_patch'] == PATCH, byid[iid]
        assert [byid[i]['attempts'] for i in ('none', 'ratelimit', 'server', 'stall', 'malformed', 'emptybody')] == [1, 2, 3, 2, 2, 2]
        t = srv.times['ratelimit']; assert t[1] - t[0] >= 0.95          # Retry-After: 1 was honoured
        assert byid['context']['context_dropped'] == ['c.py'] and context_files_in(byid['context']['prompt']) == ['a.py', 'b.py']
        assert srv.calls['context'] == 2
        assert byid['always500']['status'] == 'failed' and 'InternalServerError' in byid['always500']['error']
        assert srv.calls['always500'] == 4                                # 1 + max_retries
        assert byid['badrequest']['status'] == 'failed' and srv.calls['badrequest'] == 1 and byid['badrequest']['attempts'] == 1
        # a rerun retries only the failures, and the file still holds each id once
        s2 = run_pass(recs, spec, params, out, srv.base_url, max_workers=4, run_id='t', progress=False)
        assert (s2.skipped, s2.failed) == (7, 2)
        ids = [r['instance_id'] for r in read_jsonl(out)]
        assert sorted(ids) == sorted(set(ids)) == sorted(r['instance_id'] for r in recs)
        assert srv.calls['none'] == 1 and srv.calls['badrequest'] == 2


def test_precall_trim_to_context_limit(tmp_path):
    "A prompt over the model's window loses files from the end before it is sent."
    recs = _faulty_records()[:1]
    with FaultyOpenAIServer() as srv:
        spec = get_model('flaky', base_url=srv.base_url, context_limit=1)
        spec.context_limit = spec.count_tokens(recs[0]['prompt']) - 5 + 64
        s = run_pass(recs, spec, RunParams(temperature=0, top_p=1, max_tokens=64), tmp_path / 'o.jsonl', srv.base_url,
                     progress=False)
    (rec,) = read_jsonl(tmp_path / 'o.jsonl')
    assert s.ok == 1 and rec['context_dropped'] == ['c.py'] and rec['attempts'] == 1


def test_unknown_model_is_a_clear_error(infbench, tmp_path):
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_api', '--dataset_name', str(infbench), '--model', 'mystery-9000',
                env={'SWEBENCH_LAB_RESULTS': str(tmp_path), 'OPENAI_KEY': 'x'})
    assert r.returncode == 2 and "unknown model 'mystery-9000': register it in" in r.stderr
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_api', '--dataset_name', 'nobody/nothing', '--model', 'gpt-4.1',
                env={'SWEBENCH_LAB_RESULTS': str(tmp_path), 'OPENAI_KEY': 'x'})
    assert r.returncode == 2 and 'nobody__nothing-task-instances_0.2.jsonl: no such file' in r.stderr
