"""Training on the workbench's own graded data, with the tiny local model on the CPU: the data builders on real graded
predictions, SFT (whose adapter the workbench's server then serves), DPO from that adapter, GRPO with both rewards, the RL
environment in Docker, resume after SIGKILL, and the refusals. The graded predictions come from a demo run whose success
path needs a capable model, so two scripted policies (`agenthub.ScriptedPolicy`, loopback OpenAI-compatible servers
replaying fixed replies; `training_data.scripted_graded_predictions`) stand in for it: one answers with the gold patch,
one with a patch that applies and fixes nothing.
The prompts, run_api, the grading and the trainers are the real ones."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import DATA, DEMO_SWE, ROOT, run_cli, tagged_containers
from swebench_lab.data import load_instances, gold_patch
from swebench_lab.training_data import (NOOP_PATCH as NOTE, TrainingDataError, dpo_from_predictions, dpo_gold_vs_wrong,
                                        scripted_graded_predictions, sft_from_gold, sft_from_predictions, write_dataset)

pytestmark = pytest.mark.xdist_group('training')   # one worker: the graded predictions and adapters are made once

MISSING = 'diff --git a/missing.py b/missing.py\n--- a/missing.py\n+++ b/missing.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n'
FAST = ['train.per_device_train_batch_size=2', 'train.gradient_accumulation_steps=1']


@pytest.fixture(scope='module')
def work(tmp_path_factory, tiny):
    "A results folder, the tiny model, and the graded predictions of a demo run by two scripted policies."
    d = tmp_path_factory.mktemp('training')
    old = {k: os.environ.get(k) for k in ('SWEBENCH_LAB_RESULTS', 'SWEBENCH_LAB_CRAWLED_DATA')}
    os.environ['SWEBENCH_LAB_RESULTS'] = str(d / 'results')
    os.environ['SWEBENCH_LAB_CRAWLED_DATA'] = str(ROOT / 'crawled_data')
    graded = scripted_graded_predictions(DEMO_SWE, d / 'scripted', backend='local')
    yield {'dir': d, 'recs': load_instances(DEMO_SWE), 'tiny': tiny, 'graded': graded}
    for k, v in old.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


def _cli(*args, timeout=600):
    return run_cli(sys.executable, '-m', 'swebench_lab.training', *args, timeout=timeout)


def _metrics(out: Path) -> dict: return json.loads((out / 'metrics.json').read_text())


def test_builders_on_real_graded_predictions(work):
    "Statuses come from the harness; pairs share a prompt; the guard refuses overlap; an over-long row is dropped and counted."
    g, recs, d = work['graded'], work['recs'], work['dir']
    assert sorted((x['model'], x['status']) for x in g) == [('scripted-gold', 'resolved')] * 4 + [('scripted-noop', 'applied_failed')] * 4
    pairs = dpo_from_predictions(g)
    assert len(pairs) == 4 and {p['source'] for p in pairs} == {'resolved vs applied_failed'}
    by_id = {r['instance_id']: r for r in recs}
    for p in pairs:
        assert gold_patch(by_id[p['instance_id']]) in p['chosen'][0]['content'] and NOTE in p['rejected'][0]['content']
        assert p['prompt'][-1]['role'] == 'user'
    cheap = dpo_gold_vs_wrong(recs, g)
    assert len(cheap) == 4 and all(p['rejected'][0]['content'] == NOTE for p in cheap)
    assert len(sft_from_predictions(g)) == 4
    tok = work['tiny']['base']
    m = write_dataset(pairs + pairs[:1], d / 'dpo.jsonl', tok)
    assert m['rows'] == 4 and m['kind'] == 'dpo' and m['sources'] == {'resolved vs applied_failed': 4} and m['dropped'] == {'duplicate': 1}
    assert m['instance_ids'] == sorted(by_id) and len(m['sha256']) == 64
    with pytest.raises(TrainingDataError, match='evaluation set'):
        write_dataset(pairs, d / 'x.jsonl', tok, eval_ids=[recs[0]['instance_id']])
    assert not (d / 'x.jsonl').exists()
    m = write_dataset(pairs, d / 'x.jsonl', tok, eval_ids=[recs[0]['instance_id']], allow_contamination=True)
    assert m['contaminated_instance_ids'] == [recs[0]['instance_id']]
    sft = sft_from_gold(recs)
    full = write_dataset(sft, d / 'sft_all.jsonl', tok)
    limit = full['longest_kept'] - 1
    m = write_dataset(sft, d / 'sft_cut.jsonl', tok, max_length=limit)
    assert m['dropped'] == {'over max_length': 1} and m['rows'] == 3 and len(m['dropped_instance_ids']) == 1
    kept = [json.loads(l) for l in (d / 'sft_cut.jsonl').read_text().splitlines()]
    assert [r['completion'] for r in kept] == [r['completion'] for r in sft if r['instance_id'] not in m['dropped_instance_ids']]
    assert all(r['completion'][0]['content'].endswith('\n') for r in kept)   # byte-exact, final newline kept


@pytest.fixture(scope='module')
def sft_adapter(work):
    "SFT of the tiny model on the demo's gold patches through the command line."
    d, tiny = work['dir'], work['tiny']
    write_dataset(sft_from_gold(work['recs']), d / 'sft.jsonl', tiny['base'])
    cfg = yaml.safe_load((ROOT / 'swebench_lab' / 'configs' / 'sft_config.yaml').read_text())
    cfg['model']['base_model'], cfg['data']['train'] = str(tiny['base']), str(d / 'sft.jsonl')
    (d / 'sft.yaml').write_text(yaml.safe_dump(cfg))
    r = _cli('sft', '--config', str(d / 'sft.yaml'), 'output.name=tiny-sft', 'train.max_steps=16', 'train.learning_rate=3e-3', *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'falling back to LoRA' in r.stderr and 'adapter:' in r.stdout
    return d / 'results' / 'adapters' / 'tiny-sft'


def test_sft_lowers_loss_and_the_server_serves_the_adapter(work, sft_adapter):
    out = sft_adapter
    assert {'adapter_config.json', 'adapter_model.safetensors', 'tokenizer.json', 'config.yaml', 'data_manifest.json', 'metrics.json',
            'loss.png', 'README.md'} <= {f.name for f in out.iterdir()}
    m = _metrics(out)
    losses = [l for _, l in m['loss_history']]
    assert m['steps'] == 16 and len(losses) == 16 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses
    assert m['mode'] == 'lora' and m['tokens'] > 0 and m['tokens_per_s'] > 0
    from swebench_lab.tracking import read_scalars                  # the default tracker: TensorBoard, in the adapter's folder
    tb = read_scalars(out / 'tensorboard')
    assert [s for s, _ in tb['train/loss']] == list(range(1, 17)) and [round(v, 4) for _, v in tb['train/loss']] == [round(l, 4) for l in losses]
    assert 'train/learning_rate' in tb
    cfg = yaml.safe_load((out / 'config.yaml').read_text())
    assert cfg['train']['learning_rate'] == 3e-3 and cfg['model']['base_model'] == str(work['tiny']['base'])
    assert json.loads((out / 'data_manifest.json').read_text())['rows'] == 4
    assert 'tiny-sft' in (out / 'README.md').read_text() and '--lora-modules tiny-sft:' in (out / 'README.md').read_text()
    from swebench_lab.serving import serve_in_background
    with serve_in_background(work['tiny']['base'], f'tiny-sft:{out}', log_path=work['dir'] / 'server.log', extra_args=['--served-model-name', 'base']) as srv:
        with httpx.Client(base_url=srv.base_url, timeout=120) as c:
            assert 'tiny-sft' in [x['id'] for x in c.get('/models').json()['data']]
            prompt = [{'role': 'user', 'content': 'Given the following GitHub issue in repository demo/textkit: slugify is slow'}]
            r = c.post('/chat/completions', json={'model': 'tiny-sft', 'messages': prompt, 'max_tokens': 24, 'temperature': 0})
            base = c.post('/chat/completions', json={'model': 'base', 'messages': prompt, 'max_tokens': 24, 'temperature': 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body['model'] == 'tiny-sft' and body['usage']['completion_tokens'] > 0
    assert isinstance(body['choices'][0]['message']['content'], str)
    assert base.status_code == 200 and base.json()['choices'][0]['message']['content'] != body['choices'][0]['message']['content']


def test_dpo_continues_from_the_sft_adapter(work, sft_adapter):
    d = work['dir']
    write_dataset(dpo_from_predictions(work['graded']), d / 'pairs.jsonl', work['tiny']['base'])
    r = _cli('dpo', f"model.base_model={work['tiny']['base']}", f'model.adapter={sft_adapter}', f"data.train={d / 'pairs.jsonl'}",
             'output.name=tiny-dpo', 'train.max_steps=3', 'train.learning_rate=1e-3', *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    out = d / 'results' / 'adapters' / 'tiny-dpo'
    m = _metrics(out)
    assert m['kind'] == 'dpo' and m['steps'] == 3 and abs(m['first_loss'] - 0.6931) < 1e-3   # the reference is the SFT policy itself
    assert not (out / 'ref').exists()   # the frozen reference copy is not part of the adapter
    card = (out / 'README.md').read_text()
    assert f'started from adapter: `{sft_adapter}`' in card and 'DPO: beta 0.1' in card
    import safetensors.torch
    a, b = (safetensors.torch.load_file(p / 'adapter_model.safetensors') for p in (sft_adapter, out))
    assert a.keys() == b.keys() and any((a[k] != b[k]).any() for k in a)


def test_grpo_with_the_similarity_reward_runs_two_steps(work):
    from swebench_lab.training import train
    out = train('grpo', None, [f"model.base_model={work['tiny']['base']}", f'grpo.dataset={DEMO_SWE}', 'output.name=tiny-grpo-sim',
                               'train.max_steps=2', 'grpo.num_generations=2', 'grpo.max_completion_length=16', *FAST])
    m = _metrics(out)
    assert m['steps'] == 2 and m['rewards'] == ['similarity'] and len(m['reward_history']) == 2
    assert all(-1 <= r <= 1 for r in m['reward_history'])


@pytest.mark.docker
def test_rl_environment_rewards_in_docker(work):
    "+1 for gold, 0 for a patch that applies and fails, -1 for one that does not apply; the reward callable grades in parallel."
    from swebench_lab.training import SWEBenchEnv, TestReward
    env = SWEBenchEnv(DEMO_SWE, backend='docker', timeout=300)
    rec = work['recs'][1]
    s = env.reset(rec['instance_id'])
    assert s['repo'] == 'demo/textkit' and rec['problem_statement'].strip()[:40] in s['prompt'] and 'textkit/slug.py' in s['files']
    got = {}
    for name, patch in (('gold', gold_patch(rec)), ('applies, fails', NOTE), ('does not apply', MISSING), ('empty', '')):
        state, reward, done, info = env.step(patch)
        assert done and state['instance_id'] == rec['instance_id']
        got[name] = reward
    assert got == {'gold': 1.0, 'applies, fails': 0.0, 'does not apply': -1.0, 'empty': -1.0}
    ids = [r['instance_id'] for r in work['recs']]
    answers = [f"```diff\n{gold_patch(r)}```" for r in work['recs'][:2]] + [f'```diff\n{NOTE}```', 'no patch here']
    t = time.monotonic()
    assert TestReward(env, workers=4)(completions=answers, instance_id=ids) == [1.0, 1.0, 0.0, -1.0]
    from swebench_lab.training import SWEBenchGymEnv
    g = SWEBenchGymEnv(DEMO_SWE, backend='docker')
    obs, info = g.reset(options={'instance_id': rec['instance_id']})
    assert obs == s['prompt']
    obs, reward, terminated, truncated, info = g.step(gold_patch(rec))
    assert (reward, terminated, truncated, info['resolved']) == (1.0, True, False, True)


@pytest.mark.docker
def test_grpo_with_the_test_reward_runs_one_step_in_docker(work):
    from swebench_lab.training import train
    out = train('grpo', None, [f"model.base_model={work['tiny']['base']}", f'grpo.dataset={DEMO_SWE}', 'output.name=tiny-grpo-tests',
                               'train.max_steps=1', 'grpo.num_generations=2', 'grpo.max_completion_length=16',
                               'grpo.rewards=[similarity,tests]', 'grpo.reward_timeout=120', *FAST])
    m = _metrics(out)
    assert m['steps'] == 1 and m['rewards'] == ['similarity', 'tests'] and len(m['reward_history']) == 1


@pytest.mark.docker
def test_sft_rows_from_reward_1_agent_trajectories(work, tmp_path):
    "A scripted function-calling agent solves a task in Docker; its trajectory becomes an SFT row without the exit message."
    from swebench_lab.agenthub import load_scaffold, runagent_multiple
    from swebench_lab.scripted_policy import scripted_policy_for
    from swebench_lab.training_data import sft_from_trajectories
    recs = work['recs'][:1]
    cfg = load_scaffold('r2egym', True)
    with scripted_policy_for(recs, cfg) as p:
        s = runagent_multiple(str(DEMO_SWE), tmp_path / 'run', 'x', 'openai/scripted-policy', 'r2egym', True, k=1,
                              base_url=p.base_url, progress=False)
    assert s['reward_1'] == 1
    raw = json.loads((tmp_path / 'run' / 'trajectories_rejection_sampling.jsonl').read_text().splitlines()[0])
    [row] = sft_from_trajectories(tmp_path / 'run')
    assert row['instance_id'] == recs[0]['instance_id'] and row['tools'] == raw['tools']
    full = json.loads((tmp_path / 'run' / 'x.jsonl').read_text().splitlines()[0])   # the runner's record ends with its exit message
    assert full['messages'][-1]['role'] == 'exit' and all(m['role'] != 'exit' for m in row['messages'])
    assert row['messages'] == raw['messages'] and len(row['messages']) == len(full['messages']) - 1
    assert any(m.get('tool_calls') for m in row['messages'] if m['role'] == 'assistant')
    m = write_dataset([row], tmp_path / 'traj.jsonl', work['tiny']['base'])
    assert m['rows'] == 1 and m['sources'] == {'agent_trajectory': 1}


def test_a_killed_run_resumes_from_its_checkpoint(work, tmp_path):
    d = work['dir']
    if not (d / 'sft.jsonl').exists(): write_dataset(sft_from_gold(work['recs']), d / 'sft.jsonl', work['tiny']['base'])
    args = [sys.executable, '-m', 'swebench_lab.training', 'sft', f"model.base_model={work['tiny']['base']}", f"data.train={d / 'sft.jsonl'}",
            'output.name=killed', 'train.max_steps=40', 'train.save_steps=4', 'train.save_total_limit=3', *FAST]
    ck = d / 'results' / 'adapters' / 'killed' / 'checkpoints'
    p = subprocess.Popen(args, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(c.name == 'checkpoint-8' for c in ck.glob('checkpoint-*')) and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    steps = sorted(int(c.name.split('-')[1]) for c in ck.glob('checkpoint-*'))
    assert steps and max(steps) < 40, steps
    assert not (ck.parent / 'metrics.json').exists()
    good = max(s for s in steps if (ck / f'checkpoint-{s}' / 'trainer_state.json').exists())
    # a kill during a save leaves a checkpoint without a whole trainer_state.json: make one as such a kill would
    import shutil
    torn = ck / f'checkpoint-{good + 1}'
    shutil.rmtree(torn, ignore_errors=True)
    shutil.copytree(ck / f'checkpoint-{good}', torn)
    state = (torn / 'trainer_state.json').read_text()
    (torn / 'trainer_state.json').write_text(state[:len(state) // 2])
    steps = [good]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resuming from' in r.stderr and f'checkpoint-{good}' in r.stderr and 'cut off while it was written' in r.stderr
    assert not torn.exists() or _complete_state(torn)
    m = _metrics(ck.parent)
    assert m['steps'] == 40 and m['resumed_at_step'] == max(steps) and m['resumed_from'].endswith(f'checkpoint-{max(steps)}')


def test_refusals_are_clear(work, sft_adapter):
    d, base = work['dir'], work['tiny']['base']
    r = _cli('sft', f'model.base_model={base}', f"data.train={d / 'sft.jsonl'}", 'train.max_length=64')
    assert r.returncode == 2 and 'shorter than the longest row' in r.stderr and 'cut patches off' in r.stderr
    r = _cli('sft', f'model.base_model={base}', f"data.train={d / 'sft.jsonl'}", 'train.learnin_rate=1')
    assert r.returncode == 2 and "unknown key 'learnin_rate'" in r.stderr and 'learning_rate' in r.stderr
    (d / 'bad.yaml').write_text('model:\n  base_model: x\n  adaptr: y\n')
    r = _cli('dpo', '--config', str(d / 'bad.yaml'))
    assert r.returncode == 2 and "unknown key 'adaptr'" in r.stderr
    r = _cli('sft', f'model.base_model={base}', f"data.train={d / 'sft.jsonl'}", 'model.quantization=4bit')
    assert r.returncode == 2 and 'needs an NVIDIA GPU' in r.stderr
    r = _cli('sft', f'model.base_model={base}', f"data.train={d / 'sft.jsonl'}", 'output.report_to=tensorboard,neptune')
    assert r.returncode == 2 and "report_to 'neptune': unknown tracker" in r.stderr and 'Loading' not in r.stderr
    r = _cli('push', '--adapter', 'tiny-sft', '--repo_id', 'me/tiny-sft', '--dry-run')
    assert r.returncode == 0 and 'would upload' in r.stdout and 'adapter_model.safetensors' in r.stdout and 'checkpoint' not in r.stdout
    r = _cli('push', '--adapter', 'no-such-adapter', '--repo_id', 'me/x', '--dry-run')
    assert r.returncode == 2 and 'no adapter' in r.stderr


def _complete_state(ck: Path) -> bool:
    "A checkpoint of the resumed run that reused the number of the removed one has a whole trainer_state.json."
    return 'global_step' in json.loads((ck / 'trainer_state.json').read_text())
