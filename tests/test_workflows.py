"""The benchmark and comparison workflows end to end on the demo, in Docker: a real server with the tiny model and two LoRA
adapters (direct prompting), and an agent scaffold whose two arms are scripted policies behind one loopback endpoint
(`agenthub.ScriptedPolicy(by_model=...)`: the baseline makes a useless edit, the trained arm applies the gold patch), since
no capable model is reachable here. Every test checks that no container and no server is left behind."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DATA, DEMO_SWE, ROOT, run_cli, tagged_containers
from swebench_lab.data import load_instances

NOOP = ("THOUGHT: a note first.\n\n```mswea_bash_command\necho 'looked at it' > NOTES.md\n```",
        "THOUGHT: done.\n\n```mswea_bash_command\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n```")
KIT_FIELDS = {'total_instances', 'baseline', 'trained', 'instance_comparison', 'improvements', 'regressions', 'net_improvement'}


@pytest.fixture(autouse=True)
def _env(lab_env): pass


def _servers_of(base: Path) -> list[str]:
    r = subprocess.run(['pgrep', '-af', f'swebench_lab.serving --base-model {base}'], capture_output=True, text=True)
    return [l for l in r.stdout.splitlines() if 'pgrep' not in l]


def _wf(*args, timeout=900):
    return run_cli(sys.executable, '-m', 'swebench_lab.workflows', *args, timeout=timeout)


@pytest.mark.docker
def test_compare_direct_prompting_with_two_served_adapters(tiny, tmp_path):
    out = tmp_path / 'ab'
    r = _wf('compare', '--base-model', str(tiny['base']), '--lora-baseline', str(tiny['baseline']), '--lora-trained', str(tiny['trained']),
            '--output-dir', str(out), '--scaffold', 'direct', '--max-tokens', '24', '--dataset', str(DEMO_SWE))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "serving with the workbench's transformers server" in r.stdout and 'vllm serve' in r.stdout and '--enable-lora' in r.stdout
    assert 'exact McNemar p' in r.stdout and f"results: {out / 'results'}" in r.stdout
    assert {p.name for p in out.iterdir()} >= {'trajectories', 'predictions', 'logs', 'results', 'config.yaml'}
    assert {p.name for p in (out / 'logs').iterdir()} == {'server.log', 'agent.log', 'evaluation.log'}
    assert {p.name for p in (out / 'predictions').iterdir()} == {'baseline.jsonl', 'trained.jsonl'}
    assert {p.name for p in (out / 'results').iterdir()} >= {'comparison.json', 'comparison.png', 'comparison.csv', 'rates.csv', 'instances.csv'}
    c = json.loads((out / 'results' / 'comparison.json').read_text())
    assert KIT_FIELDS <= set(c) and c['total_instances'] == 4
    for arm in ('baseline', 'trained'):
        assert set(c[arm]) >= {'evaluated', 'resolved', 'has_patch', 'avg_turns', 'resolved_lo', 'resolved_hi'} and c[arm]['evaluated'] == 4
    assert c['net_improvement'] == len(c['improvements']) - len(c['regressions'])
    pair = c['statistics']['pairs'][0]
    assert (pair['a'], pair['b'], pair['test']) == ('baseline', 'trained', 'exact McNemar') and 0 <= pair['p'] <= 1
    preds = [json.loads(l) for l in (out / 'predictions' / 'trained.jsonl').read_text().splitlines()]
    assert {p['model_name_or_path'] for p in preds} == {'trained'} and len(preds) == 4
    assert _servers_of(tiny['base']) == []


@pytest.mark.docker
def test_compare_with_an_agent_scaffold_scripted(tmp_path):
    "mini_swe_agent per arm: the scripted trained arm resolves what the scripted baseline does not; the statistics say so."
    from swebench_lab.scripted_policy import ScriptedPolicy, gold_script
    from swebench_lab.agenthub import load_scaffold
    from swebench_lab.prompt_builder import task_text
    recs = load_instances(DEMO_SWE)[:2]
    cfg = load_scaffold('mini_swe_agent', False)
    policy = ScriptedPolicy({}, default=list(NOOP), by_model={'baseline': {}, 'trained': {task_text(r).strip(): gold_script(r, cfg) for r in recs}})
    with policy as p:
        r = _wf('compare', '--endpoint', p.base_url, '--output-dir', str(tmp_path / 'ab'), '--max-instances', '2', '--dataset', str(DEMO_SWE))
    assert r.returncode == 0, r.stderr[-3000:]
    c = json.loads((tmp_path / 'ab' / 'results' / 'comparison.json').read_text())
    ids = [x['instance_id'] for x in recs]
    assert (c['baseline']['resolved'], c['trained']['resolved'], c['improvements'], c['regressions'], c['net_improvement']) == (0, 2, ids, [], 2)
    assert c['instance_comparison'] == {i: {'baseline': False, 'trained': True} for i in ids}
    assert c['baseline']['has_patch'] == 2 and c['baseline']['applied'] == 2 and c['trained']['avg_turns'] >= 3
    pair = c['statistics']['pairs'][0]
    assert pair['difference'] == 1.0 and pair['p'] == 0.5   # 2 discordant instances, both one way: exact two-sided p = 2 * 0.5**2
    for arm in ('baseline', 'trained'):
        d = tmp_path / 'ab' / 'trajectories' / arm
        assert (d / 'trajectories.jsonl').exists() and all((d / i / 'report.json').exists() for i in ids)
    assert '+100.0 points' in r.stdout


def test_training_instances_are_left_out(tiny, tmp_path):
    "An adapter's data manifest keeps its training instances out of the comparison, by name; all of them out is an error."
    import shutil
    trained = tmp_path / 'trained'
    shutil.copytree(tiny['trained'], trained)
    ids = [r['instance_id'] for r in load_instances(DEMO_SWE)]
    (trained / 'data_manifest.json').write_text(json.dumps({'instance_ids': ids[:3]}))
    r = _wf('compare', '--base-model', str(tiny['base']), '--lora-baseline', str(tiny['baseline']), '--lora-trained', str(trained),
            '--output-dir', str(tmp_path / 'ab'), '--scaffold', 'direct', '--max-tokens', '8', '--sandbox', 'local', '--dataset', str(DEMO_SWE))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'leaving out 3 instance(s) an adapter was trained on' in r.stderr
    c = json.loads((tmp_path / 'ab' / 'results' / 'comparison.json').read_text())
    assert c['total_instances'] == 1 and c['left_out_training_instances'] == ids[:3] and list(c['instance_comparison']) == ids[3:]
    (trained / 'data_manifest.json').write_text(json.dumps({'instance_ids': ids}))
    r = _wf('compare', '--base-model', str(tiny['base']), '--lora-baseline', str(tiny['baseline']), '--lora-trained', str(trained),
            '--output-dir', str(tmp_path / 'ab2'), '--scaffold', 'direct', '--dataset', str(DEMO_SWE))
    assert r.returncode == 2 and 'every one was a training instance' in r.stderr
    r = _wf('compare', '--base-model', str(tiny['base']), '--lora-baseline', str(tmp_path), '--lora-trained', str(trained),
            '--output-dir', str(tmp_path / 'ab3'), '--dataset', str(DEMO_SWE))
    assert r.returncode == 2 and 'not a LoRA adapter folder' in r.stderr
    assert _servers_of(tiny['base']) == []


def test_benchmark_one_adapter(tiny, tmp_path):
    r = _wf('run_swe_verified', '--base-model', str(tiny['base']), '--lora-path', str(tiny['trained']), '--output-dir', str(tmp_path / 'b'),
            '--scaffold', 'direct', '--max-tokens', '8', '--sandbox', 'local', '--max-instances', '2', '--dataset', str(DEMO_SWE), '--no-vllm')
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / 'b' / 'results' / 'summary.json').read_text())
    assert (s['arm'], s['total_instances'], s['evaluated']) == ('trained', 2, 2) and 0 <= s['resolved_lo'] <= s['resolved_hi'] <= 1
    assert '(--no-vllm)' in r.stdout


def test_sigterm_stops_the_server(tiny, tmp_path):
    "SIGTERM in the middle of a run: the command exits and its model server is gone."
    out = tmp_path / 'ab'
    p = subprocess.Popen([sys.executable, '-m', 'swebench_lab.workflows', 'compare', '--base-model', str(tiny['base']),
                          '--lora-baseline', str(tiny['baseline']), '--lora-trained', str(tiny['trained']), '--output-dir', str(out),
                          '--scaffold', 'direct', '--max-tokens', '2000', '--sandbox', 'local', '--dataset', str(DEMO_SWE)],
                         cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not _servers_of(tiny['base']): time.sleep(0.2)
    assert _servers_of(tiny['base']), 'the server never started'
    while time.monotonic() < deadline and not (out / 'logs' / 'agent.log').exists(): time.sleep(0.2)
    time.sleep(1)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _servers_of(tiny['base']): time.sleep(0.2)
    assert _servers_of(tiny['base']) == []
    assert 'server stopped' in err
