"""Coding agents in real containers on the demo tasks. No capable model is reachable here, so the success path runs on a
scripted policy (`agenthub.ScriptedPolicy`: a loopback OpenAI-compatible server replaying fixed replies or tool calls);
robustness against real garbage runs on the tiny local model behind the workbench's own server. Every test checks that
no container is left behind."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DATA, DEMO_SWE, ROOT, run_cli, tagged_containers
from swebench_lab.agenthub import SCAFFOLDS, load_scaffold, runagent_multiple
from swebench_lab.scripted_policy import ScriptedPolicy, gold_script, scripted_policy_for
from swebench_lab.prompt_builder import task_text
from swebench_lab.data import load_instances

FAKE_KEY = 'sk-proj-AGENTFAKEKEY0123456789abcdefXYZ'
COMBOS = [(s, m) for s, modes in SCAFFOLDS.items() for m in modes]


@pytest.fixture(autouse=True)
def _env(lab_env, monkeypatch):
    monkeypatch.setenv('OPENAI_API_KEY', FAKE_KEY)


def _no_secret(d: Path):
    for f in d.rglob('*'):
        if f.is_file(): assert FAKE_KEY.encode() not in f.read_bytes(), f


@pytest.mark.docker
@pytest.mark.parametrize('scaffold,mode', COMBOS, ids=[f'{s}-{m}' for s, m in COMBOS])
def test_each_scaffold_and_mode_solves_a_task_when_scripted(scaffold, mode, tmp_path):
    "Explore, edit (bash, or the file editor's str_replace), run the tests, submit: reward 1 from the harness."
    recs = load_instances(DEMO_SWE)[:1]
    cfg = load_scaffold(scaffold, mode == 'fn')
    with scripted_policy_for(recs, cfg) as p:
        s = runagent_multiple(str(DEMO_SWE), tmp_path / 'run', 'x', 'openai/scripted-policy', scaffold, mode == 'fn', k=1,
                              base_url=p.base_url, progress=False)
    assert (s['reward_1'], s['exit_reasons']) == (1, {'submitted': 1}), s
    d = tmp_path / 'run' / recs[0]['instance_id']
    assert {'agent.log', 'output_patch.diff', 'test_output.log', 'metadata.json', 'report.json', f"{recs[0]['instance_id']}.traj.json"} <= {p.name for p in d.iterdir()}
    line = json.loads((tmp_path / 'run' / 'trajectories.jsonl').read_text())
    assert ('tools' in line) is (mode == 'fn')
    if mode == 'fn': assert any(m['role'] == 'tool' and m['tool_call_id'] for m in line['messages'])
    assert (tmp_path / 'run' / 'trajectories_rejection_sampling.jsonl').read_text().strip()
    _no_secret(tmp_path / 'run')


WRONG = ("THOUGHT: a change.\n\n```mswea_bash_command\nsed -i 's/return \"-\".join/return \"_\".join/' textkit/slug.py\n```",
         "THOUGHT: done.\n\n```mswea_bash_command\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n```")
LOOK = "THOUGHT: looking.\n\n```mswea_bash_command\nls\n```"


@pytest.mark.docker
def test_wrong_edit_no_submission_and_malformed_replies(tmp_path):
    "A wrong edit gets reward 0; a run that never submits stops at the hard step limit (told at the soft one); garbage ends the run."
    recs = load_instances(DEMO_SWE)[:3]
    scripts = {task_text(recs[0]).strip(): list(WRONG), task_text(recs[1]).strip(): [LOOK]}
    with ScriptedPolicy(scripts) as p:
        s = runagent_multiple(str(DEMO_SWE), tmp_path / 'run', 'x', 'openai/scripted-policy', 'mini_swe_agent', k=2, max_workers=2,
                              max_steps=2, max_steps_absolute=4, base_url=p.base_url, progress=False)
        bad = {task_text(recs[2]).strip(): ['no code block here', LOOK, 'still nothing', 'nor here', 'not this either']}
        with ScriptedPolicy(bad) as q:
            runagent_multiple(str(DEMO_SWE), tmp_path / 'run2', 'y', 'openai/scripted-policy', 'mini_swe_agent',
                              instance_ids=[recs[2]['instance_id']], base_url=q.base_url, progress=False)
    m0, m1, m2 = (json.loads((tmp_path / d / r['instance_id'] / 'metadata.json').read_text()) for d, r in zip(('run', 'run', 'run2'), recs))
    assert (m0['exit_reason'], m0['reward'], m0['eval_status']) == ('submitted', 0, 'graded')
    assert (m1['exit_reason'], m1['steps'], m1['reward']) == ('step_limit', 4, 0)
    traj1 = json.loads((tmp_path / 'run' / recs[1]['instance_id'] / f"{recs[1]['instance_id']}.traj.json").read_text())
    assert sum('the budget for this task' in (m.get('content') or '') for m in traj1['messages']) == 1
    assert m2['exit_reason'] == 'format_errors'          # corrected once (then a good step), then three bad replies in a row
    traj2 = json.loads((tmp_path / 'run2' / recs[2]['instance_id'] / f"{recs[2]['instance_id']}.traj.json").read_text())
    assert sum('not in the required format' in (m.get('content') or '') for m in traj2['messages']) == 4
    assert s['reward_1'] == 0 and json.loads((tmp_path / 'run' / 'reward_summary.json').read_text())['reward_0']['count'] == 2


def _cmd(c: str) -> str: return f"THOUGHT: step.\n\n```mswea_bash_command\n{c}\n```"


@pytest.mark.docker
def test_a_hostile_agent_cannot_forge_a_step_or_take_its_instance_down(tmp_path):
    """Commands that read the sandbox controller's memory, write to its stdin or print its frames change nothing; removing
    .git or killing every process ends the instance with a named exit reason and reward 0, and the batch goes on."""
    recs = load_instances(DEMO_SWE)[:2]
    probe = ('pid=$(pgrep -x sandbox-ctl); head -c 64 /proc/$pid/mem; echo "echo injected > /tmp/pwned" > /proc/$pid/fd/0; '
             r'printf "X\0\0\0\4\0\0\0\0"; exit 3')
    scripts = {task_text(recs[0]).strip(): [_cmd(probe), _cmd('ls /tmp/pwned; rm -rf /testbed/.git'), _cmd('echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT')],
               task_text(recs[1]).strip(): [_cmd('kill -9 -1'), _cmd('echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT')]}
    with ScriptedPolicy(scripts) as p:
        s = runagent_multiple(str(DEMO_SWE), tmp_path / 'run', 'x', 'openai/scripted-policy', 'mini_swe_agent', k=2, max_workers=2,
                              base_url=p.base_url, progress=False)
    assert (s['finished'], s['errors'], s['reward_1']) == (2, {}, 0), s
    m0, m1 = (json.loads((tmp_path / 'run' / r['instance_id'] / 'metadata.json').read_text()) for r in recs)
    assert (m0['exit_reason'], m0['reward'], m0['eval_status']) == ('patch_unavailable', 0, 'no_patch') and 'could not take the patch' in m0['exit_detail'], m0
    assert (m1['exit_reason'], m1['reward']) == ('patch_unavailable', 0), m1
    assert 'went away' in m1['exit_detail'] or 'controller was killed' in m1['exit_detail'], m1
    assert s['exit_reasons'] == {'patch_unavailable': 2}, s
    traj = json.loads((tmp_path / 'run' / recs[0]['instance_id'] / f"{recs[0]['instance_id']}.traj.json").read_text())
    obs = [m['content'] for m in traj['messages'] if m['role'] == 'user'][1:3]
    assert obs[0].count('Permission denied') == 2 and '<returncode>3</returncode>' in obs[0], obs[0]
    assert 'No such file' in obs[1], obs[1]              # the injected command never ran
    assert not tagged_containers()


@pytest.mark.docker
def test_limits_and_api_faults_each_have_an_exit_reason(tmp_path, monkeypatch):
    "A rate limit is waited out (Retry-After); a context overflow, the cost limit and the time limit each end a run by name."
    recs = load_instances(DEMO_SWE)[:3]
    (tmp_path / 'models.yaml').write_text('scripted-priced: {context_limit: 100000, price_in: 0.001, price_out: 0.001}\n')
    monkeypatch.setenv('SWEBENCH_LAB_MODELS', str(tmp_path / 'models.yaml'))
    cfg = load_scaffold('mini_swe_agent', False)
    gold = gold_script(recs[0], cfg)
    scripts = {task_text(recs[0]).strip(): [{'fail_first': 1, 'error': {'status': 429, 'message': 'slow down', 'retry_after': 1}, 'reply': gold[0]}, *gold[1:]],
               task_text(recs[1]).strip(): [LOOK, {'error': {'status': 400, 'code': 'context_length_exceeded',
                                                            'message': "This model's maximum context length is 100 tokens."}}],
               task_text(recs[2]).strip(): [LOOK]}
    with ScriptedPolicy(scripts, model='scripted-priced') as p:
        s = runagent_multiple(str(DEMO_SWE), tmp_path / 'run', 'x', 'openai/scripted-priced', 'mini_swe_agent', k=3,
                              cost_limit=5.0, base_url=p.base_url, progress=False)
    reasons = {r['instance_id']: json.loads((tmp_path / 'run' / r['instance_id'] / 'metadata.json').read_text()) for r in recs}
    assert (reasons[recs[0]['instance_id']]['exit_reason'], reasons[recs[0]['instance_id']]['reward']) == ('submitted', 1)
    assert reasons[recs[1]['instance_id']]['exit_reason'] == 'context_exceeded'
    assert reasons[recs[2]['instance_id']]['cost'] > 0
    with ScriptedPolicy({task_text(recs[2]).strip(): [LOOK]}, model='scripted-priced') as p:
        s = runagent_multiple(str(DEMO_SWE), tmp_path / 'run2', 'x', 'openai/scripted-priced', 'mini_swe_agent', instance_ids=[recs[2]['instance_id']],
                              cost_limit=0.5, base_url=p.base_url, progress=False)
        assert s['exit_reasons'] == {'cost_limit': 1}, s
        s = runagent_multiple(str(DEMO_SWE), tmp_path / 'run3', 'x', 'openai/scripted-priced', 'mini_swe_agent', instance_ids=[recs[2]['instance_id']],
                              time_limit=1, base_url=p.base_url, progress=False, max_steps=1000, max_steps_absolute=1000, cost_limit=0)
        assert s['exit_reasons'] == {'time_limit': 1}, s


@pytest.mark.docker
def test_the_cli_resumes_a_killed_run_and_preds_grade_the_same(tmp_path):
    "SIGKILL mid-run, then --use_existing: every instance once; mini's preds.json graded by run_evaluation gives the same rewards."
    recs = load_instances(DEMO_SWE)
    cfg = load_scaffold('mini_swe_agent', False)
    scripts = {task_text(r).strip(): gold_script(r, cfg) if i % 2 == 0 else list(WRONG) for i, r in enumerate(recs)}
    (tmp_path / 'scripts.json').write_text(json.dumps(scripts))
    server = subprocess.Popen([sys.executable, '-c', (
        "import json, sys, time\nfrom swebench_lab.scripted_policy import ScriptedPolicy\n"
        f"p = ScriptedPolicy(json.load(open({str(tmp_path / 'scripts.json')!r}))).__enter__()\n"
        "print(p.base_url, flush=True)\ntime.sleep(3600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        base = server.stdout.readline().strip()
        cmd = [sys.executable, '-m', 'swebench_lab.agenthub', 'runagent_multiple', '--dataset', str(DEMO_SWE), '--split', 'test',
               '--k', '4', '--start_idx', '0', '--max_workers', '1', '--traj_dir', str(tmp_path / 'run'), '--exp_name', 'resume',
               '--llm_name', 'openai/scripted-policy', '--use_fn_calling', 'False', '--backend', 'docker', '--scaffold', 'mini_swe_agent',
               '--base_url', base]
        p = subprocess.Popen(cmd, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        main = tmp_path / 'run' / 'resume.jsonl'
        t0 = time.time()
        while not (main.exists() and main.read_text().count('\n') >= 1):
            assert p.poll() is None and time.time() - t0 < 300
            time.sleep(0.2)
        p.kill(); p.wait()
        subprocess.run([sys.executable, '-m', 'swebench_lab.environments', 'remove'], capture_output=True)
        done_before = [json.loads(l)['instance_id'] for l in main.read_text().splitlines()]
        r = run_cli(*cmd, '--use_existing')
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        ids = [json.loads(l)['instance_id'] for l in main.read_text().splitlines()]
        assert sorted(ids) == sorted(x['instance_id'] for x in recs) and ids[:len(done_before)] == done_before
        summary = json.loads((tmp_path / 'run' / 'reward_summary.json').read_text())
        assert summary['reward_1']['count'] == 2 and summary['total'] == 4
        preds = json.loads((tmp_path / 'run' / 'preds.json').read_text())
        assert set(preds) == set(ids) and all(v['model_name_or_path'] == 'openai/scripted-policy' for v in preds.values())
        r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE), '--model', 'agent',
                    '--predictions_path', str(tmp_path / 'run' / 'preds.json'))
        assert r.returncode == 0, r.stderr
        ev = json.loads((tmp_path / 'results' / 'evaluations' / 'demo-swebench' / 'agent' / 'summary.json').read_text())
        assert sorted(ev['resolved_ids']) == sorted(summary['reward_1']['instance_ids'])
        _no_secret(tmp_path / 'run')
    finally:
        server.kill()


@pytest.mark.docker
def test_sigterm_removes_the_containers_and_keeps_finished_instances(tmp_path):
    recs = load_instances(DEMO_SWE)
    scripts = {task_text(r).strip(): [LOOK.replace('ls', 'sleep 2; ls')] for r in recs}
    (tmp_path / 'scripts.json').write_text(json.dumps(scripts))
    server = subprocess.Popen([sys.executable, '-c', (
        "import json, time\nfrom swebench_lab.scripted_policy import ScriptedPolicy\n"
        f"p = ScriptedPolicy(json.load(open({str(tmp_path / 'scripts.json')!r}))).__enter__()\nprint(p.base_url, flush=True)\ntime.sleep(3600)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        base = server.stdout.readline().strip()
        p = subprocess.Popen([sys.executable, '-m', 'swebench_lab.agenthub', 'runagent_multiple', '--dataset', str(DEMO_SWE),
                              '--traj_dir', str(tmp_path / 'run'), '--exp_name', 'term', '--llm_name', 'openai/scripted-policy',
                              '--max_workers', '2', '--base_url', base], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        t0 = time.time()
        while len(tagged_containers(running=True)) < 2:
            assert p.poll() is None and time.time() - t0 < 300
            time.sleep(0.2)
        time.sleep(1)
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=120)[0].decode()
        assert p.returncode == 130, out[-2000:]
    finally:
        server.kill()


@pytest.mark.docker
def test_the_tiny_model_runs_to_a_recorded_exit(tmp_path, tiny):
    "Real garbage from a real (tiny, random) model through the workbench's server and LiteLLM: no crash, an exit reason."
    from swebench_lab.serving import serve_in_background
    with serve_in_background(str(tiny['base']), f"trained:{tiny['trained']}", log_path=tmp_path / 'server.log',
                             extra_args=['--served-model-name', 'tiny', '--default-max-tokens', '64', '--max-model-len', '65536']) as h:
        for scaffold, fn in (('mini_swe_agent', False), ('r2egym', True)):
            s = runagent_multiple(str(DEMO_SWE), tmp_path / f'run-{scaffold}', 'tiny', 'openai/trained', scaffold, fn, k=1,
                                  max_steps=3, max_steps_absolute=4, max_tokens=32, base_url=h.base_url, progress=False)
            assert s['finished'] == 1 and not s['errors'], s
            reason = next(iter(s['exit_reasons']))
            assert reason in ('format_errors', 'step_limit', 'submitted', 'context_exceeded'), s
