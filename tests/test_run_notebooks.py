"""Each run notebook in nbs/runs/ runs through papermill with tiny parameters and leaves a complete
run record; secrets in the environment appear in none of its outputs."""
import json
from contextlib import nullcontext
from pathlib import Path
import shutil

import pytest

from conftest import ROOT, one_at_a_time
from swebench_lab.data import load_instances
from swebench_lab.runs import execute_run, list_runs

TINY = {'demo': {'info_pct': 0.5, 'topn': 1, 'max_tokens': 8, 'backend': 'local', 'sft_steps': 4},
        'results': {},
        'build_infbench': {'info_pct': 0.5, 'use_bm25': True, 'topn': 2},
        'bench_retrieval': {'max_files': 40, 'n_queries': 5},
        'inference': {'max_tokens': 8, 'run_ids': ['0.5']},
        'bench_inference': {'latency_s': 0.01, 'n_requests': 16, 'workers': [1, 4], 'repeats': 1, 'resume_lines': 500},
        'evaluate': {'backend': 'local', 'max_workers': 2},
        'bench_evaluation': {'n_instances': 2, 'workers': [1, 2], 'repeats': 1, 'n_build': 1},
        'bench_adversarial': {'cases': ['runner_shadow_pytest_py', 'exit_os_exit'], 'flood_mib': 64, 'failing_streams': 4,
                              'abandoned_streams': 1, 'normal_requests': 4, 'overhead_repeats': 1},
        'agents': {'k': 2, 'max_workers': 2, 'backend': 'local'},
        'bench_agents': {'n_steps': 10, 'n_instances': 2, 'workers': [1, 2], 'repeats': 1},
        'bench_serving': {'clients': [1, 4], 'n_requests': 4, 'max_tokens': 4, 'repeats': 1},
        'bench_cluster': {'workers': 2, 'n_noop': 20, 'repeats': 1, 'rounds': 1},
        'bench_results': {'n_runs': 50, 'instances': 4, 'repeats': 1},
        'bench_training': {'steps': 2, 'repeats': 1, 'hidden_size': 32, 'layers': 1},
        'taskgen': {'jobs': [{'repo': 'demo/textkit', 'source': 'inject', 'commit': 'HEAD'}, {'repo': 'demo/textkit', 'source': 'mine', 'rev_range': 'HEAD'},
                             {'repo': 'nobody/nothing', 'source': 'mine', 'rev_range': 'HEAD'}],
                    'strategies': ['flip_comparison', 'off_by_one'], 'per_strategy': 2, 'backend': 'local'},
        'pro_pipeline': {'samples': 1, 'max_tokens': 16, 'sft_overrides': ['train.max_steps=4', 'train.per_device_train_batch_size=2'],
                         'dpo_overrides': ['train.max_steps=2', 'train.per_device_train_batch_size=2']},
        'train': {'backend': 'local', 'sft_overrides': ['train.max_steps=4', 'train.per_device_train_batch_size=2', 'train.gradient_accumulation_steps=1'],
                  'dpo_overrides': ['train.max_steps=2', 'train.per_device_train_batch_size=2', 'train.gradient_accumulation_steps=1']}}
DOCKER = {'bench_evaluation', 'bench_adversarial', 'bench_agents', 'bench_cluster', 'pro_pipeline'}
def _scratch_crawled_data(tmp_path):
    "A copy of the committed inputs, so runs never write into the project's crawled_data/."
    d = tmp_path / 'crawled_data'
    shutil.copytree(ROOT / 'crawled_data' / 'bench', d / 'bench')
    shutil.copytree(ROOT / 'crawled_data' / 'envs', d / 'envs')
    shutil.copytree(ROOT / 'crawled_data' / 'SWE-bench_Pro-demo', d / 'SWE-bench_Pro-demo')
    (d / 'repos').mkdir()
    shutil.copy(ROOT / 'crawled_data' / 'repos' / 'demo__textkit.bundle', d / 'repos')
    return d


FAKE_KEY = 'sk-proj-FAKEFAKEFAKEfake0123456789abcdefXYZ'


def test_every_run_notebook_has_tiny_parameters():
    assert set(list_runs()) <= set(TINY), f"add tiny parameters for: {set(list_runs()) - set(TINY)}"


def _check_record(rdir: Path, name: str, parameters: dict):
    "What every run leaves: an ok run.json with its parameters and provenance, the executed notebook, the log."
    rec = json.loads((rdir / 'run.json').read_text())
    assert rec['status'] == 'ok' and rec['parameters'].items() >= parameters.items()
    assert rec['provenance']['packages']['swebench_lab']
    assert (rdir / f'{name}.ipynb').exists() and (rdir / 'run.log').exists()


def _check_demo(rdir: Path, extra_models: int = 0):
    "The demo's loop closed: graded baselines, the rates figure, the A/B on the held-out tasks, the adapter's steps."
    import csv
    out = json.loads((rdir / 'outputs.json').read_text())
    assert out['backend'] == 'local' and (rdir / 'resolved_rates.png').stat().st_size > 10000
    rates = {(r['model'], r['run_id']): int(r['resolved']) for r in csv.DictReader(open(rdir / 'rates.csv'))}
    assert rates[('gold', '0.5_body_issue')] == 4 and rates[('empty', '0.5_body_issue')] == 0 and len(rates) == 8 + 2 * extra_models
    ab = json.loads(open(out['comparison']).read())
    n = out['ab_instances']           # the held-out tasks and the generated ones
    assert ab['left_out_training_instances'] == ['demo__textkit-1', 'demo__textkit-2'] and n > 2 and ab['total_instances'] == n
    assert {'demo__textkit-3', 'demo__textkit-4'} <= set(ab['instance_comparison']) and len(ab['instance_comparison']) == n
    assert Path(out['comparison_figure']).exists() and len(load_instances(out['generated_tasks'])) == n - 2
    assert json.loads((Path(out['adapter']) / 'metrics.json').read_text())['steps'] == 4


def _marks(n):
    "Docker notebooks need an engine; the cluster benchmark starts a Ray, so it runs in the worker of the cluster tests."
    return [*([pytest.mark.docker] if n in DOCKER else []), *([pytest.mark.alone] if n == 'bench_cluster' else [])]


# `demo` runs once, with an API model added, in test_demo_with_an_api_model (every check of its own included)
@pytest.mark.parametrize('name', [pytest.param(n, marks=_marks(n)) for n in sorted(TINY) if n != 'demo'])
def test_run_notebook(name, results_tmp, tmp_path, monkeypatch):
    monkeypatch.setenv('OPENAI_API_KEY', FAKE_KEY)
    crawled = _scratch_crawled_data(tmp_path)
    monkeypatch.setenv('SWEBENCH_LAB_CRAWLED_DATA', str(crawled))
    if name == 'results':  # its input: some evaluation reports
        from swebench_lab.run_evaluation import run_evaluation
        for m in ('gold', 'empty'):
            run_evaluation(str(crawled / 'bench' / 'demo-swebench.jsonl'), m, 'demo', m, backend='local', progress=False)
    if name == 'inference':  # its input: the demo's prompts
        from swebench_lab.core import write_jsonl_atomic
        from swebench_lab.data import load_instances
        from swebench_lab.prompt_builder import BuildOptions, build_infbench, infbench_path
        recs, _ = build_infbench(load_instances(crawled / 'bench' / 'demo-task-instances.jsonl'),
                                 BuildOptions(info_pct=0.5, pr_mes=False, issue_mes=False))
        write_jsonl_atomic(infbench_path('demo', '0.5'), recs)
    monkeypatch.setenv('OPENAI_KEYS', f'{FAKE_KEY},sk-proj-SECONDfakeKEY0123456789abcdef')
    with one_at_a_time('ray') if name == 'bench_cluster' else nullcontext():    # it starts a Ray, as the cluster tests do
        rdir = execute_run(name, TINY[name], log_to_console=False)
    _check_record(rdir, name, TINY[name])
    if name == 'build_infbench':
        assert (tmp_path / 'crawled_data' / 'infbench' / 'demo-task-instances_0.5_body_issue_bm25_2.jsonl').exists()
        assert (rdir / 'prompt_tokens.png').stat().st_size > 5000
    if name == 'inference':
        for m in ('baseline', 'trained'):
            preds = results_tmp / m / 'T=0' / 'n=1' / 'demo-task-instances_0.5.jsonl'
            assert sorted(json.loads(l)['status'] for l in preds.read_text().splitlines()) == ['ok'] * 4
        assert (rdir / 'inference.png').exists()
    if name == 'bench_inference':
        summary = json.loads((results_tmp / 'benchmarks' / 'bench_inference.json').read_text())
        assert [r['workers'] for r in summary['throughput']] == [1, 4] and summary['resume'][0]['file_lines'] == 500
    if name == 'bench_cluster':
        summary = json.loads((results_tmp / 'benchmarks' / 'bench_cluster.json').read_text())
        assert [r['executor'] for r in summary['noop']] == ['local', 'ray'] and all(r['ms_per_task_median'] > 0 for r in summary['noop'])
        assert summary['instances_per_measurement'] == 4 and summary['driver_folders_per_s'] > 0
        assert {'env', 'inst'} <= {r['kind'] for r in summary['images']} and len(summary['plans']) == 6
    if name == 'pro_pipeline':
        out = json.loads((rdir / 'outputs.json').read_text())
        assert len(out['train_ids']) == 2 and len(out['heldout_ids']) == 2 and not set(out['train_ids']) & set(out['heldout_ids'])
        assert out['gold_resolved'] == 2 and out['pairs'] >= 2 and set(out['adapters']) == {'sft', 'dpo'}
        assert out['comparison']['instances'] == 2 and (rdir / 'loss.png').exists()
        for d in (rdir / 'evaluations' / 'heldout').iterdir():      # held-out answers graded by the Pro harness
            for rep in d.glob('*/report.json'):
                r = next(iter(json.loads(rep.read_text()).values()))
                assert r['grading'] == 'swebench_pro' or r['status'] == 'empty_patch', r
    if name == 'results':
        import csv
        rates = {r['model']: int(r['resolved']) for r in csv.DictReader(open(rdir / 'rates.csv'))}
        assert rates == {'gold': 4, 'empty': 0} and (rdir / 'resolved_by_repo.png').exists()
        paired = json.loads((rdir / 'paired.json').read_text())['demo']['pairs'][0]
        assert (paired['difference'], paired['p'], len(paired['improved']) + len(paired['regressed'])) in ((1.0, 0.125, 4), (-1.0, 0.125, 4))
        assert (rdir / 'comparison_demo.png').exists()
        assert {r['repo'] for r in csv.DictReader(open(rdir / 'rates_by_repo.csv'))} == {'demo/textkit'}
    if name == 'bench_results':
        summary = json.loads((results_tmp / 'benchmarks' / 'bench_results.json').read_text())
        assert summary['n_runs'] == 50 and len(summary['rows']) == 7 and all(r['median_ms'] > 0 for r in summary['rows'])
        assert set(summary['ratios']) == {'scan / warm index', 'cold / warm index'} and (rdir / 'bench_results.png').exists()
    if name == 'evaluate':
        summary = json.loads((rdir / 'summary.json').read_text())
        assert summary['resolved_instances'] == 4 and (rdir / 'evaluation.png').exists()
    if name == 'bench_evaluation':
        summary = json.loads((results_tmp / 'benchmarks' / 'bench_evaluation.json').read_text())
        assert summary['overhead']['samples'] == 2 and [r['workers'] for r in summary['throughput']] == [1, 2]
    if name == 'agents':
        assert (rdir / 'agents.png').exists() and 'swbl-traj' in (rdir / 'first_trajectory.html').read_text()
        assert json.loads((rdir / 'trajectories' / 'reward_summary.json').read_text())['reward_1']['count'] == 2
    if name == 'bench_agents':
        summary = json.loads((results_tmp / 'benchmarks' / 'bench_agents.json').read_text())
        assert len(summary['step_overhead']) == 2 and [r['workers'] for r in summary['throughput']] == [1, 2]
    if name == 'bench_adversarial':
        summary = json.loads((results_tmp / 'benchmarks' / 'bench_adversarial.json').read_text())
        assert [r['as_expected'] for r in summary['attacks']] == [True, True] and summary['flood']['truncated']
        assert [r['repeats'] for r in summary['overhead']] == [1] and summary['overhead'][0]['bare_s'] > 0
        assert summary['server']['failing_streams_ended_with_error'] == 4
    if name == 'bench_serving':
        summary = json.loads((results_tmp / 'benchmarks' / 'bench_serving.json').read_text())
        for sched in ('batch', 'serial'):     # both schedulers, measured at every level in the same run
            assert [r['clients'] for r in summary['results'] if r['server'] == f'transformers ({sched})'] == [1, 4]
        assert [r['clients'] for r in summary['ratios']] == [1, 4] and all(r['throughput batch/serial'] > 0 for r in summary['ratios'])
        assert all(r['tokens_per_s'] > 0 for r in summary['results']) and (rdir / 'bench_serving.png').exists()
    if name == 'taskgen':
        out = json.loads((rdir / 'outputs.json').read_text())
        assert out['skipped'] == {'nobody/nothing mine': 'not in the repository store'}
        inject, mine = out['summaries']
        assert inject['valid'] >= 1 and mine['dropped'] == {'contamination guard: a benchmark row has this patch': 4}
        assert out['validate'][inject['name']]['valid'] == inject['valid'] and (rdir / 'yield.png').exists()
    if name == 'bench_training':
        summary = json.loads((results_tmp / 'benchmarks' / 'bench_training.json').read_text())
        assert {r['runner'] for r in summary['runs']} == {'plain TRL', 'workbench'} and summary['tokens_per_s_ratio'] > 0
        assert (rdir / 'bench_training.png').exists()
    if name == 'train':
        out = json.loads((rdir / 'outputs.json').read_text())
        assert set(out['adapters']) == {'sft', 'dpo'} and [out['metrics'][k]['steps'] for k in ('sft', 'dpo')] == [4, 2]
        assert set(out['served']) >= {f'{rdir.name}-sft', f'{rdir.name}-dpo'} and (rdir / 'loss.png').stat().st_size > 5000
        manifest = json.loads((rdir / 'data' / 'dpo.manifest.json').read_text())
        assert manifest['sources'] == {'resolved vs applied_failed': 4, 'gold vs wrong': 4}
    if name == 'bench_retrieval':
        summary = json.loads((results_tmp / 'benchmarks' / 'bench_retrieval.json').read_text())
        assert summary['identical_topn'] == '5/5' and summary['max_score_diff'] < 1e-6
    for f in results_tmp.rglob('*'):
        if f.is_file():
            data = f.read_bytes()
            assert FAKE_KEY.encode() not in data and b'SECONDfakeKEY' not in data, f


def test_demo_with_an_api_model(results_tmp, tmp_path, monkeypatch):
    """The main job, with one parameter adding an API model: registered in the user's models.yaml, key from its variable,
    never written out; the rest of the loop as without it."""
    from faulty_server import FaultyOpenAIServer
    monkeypatch.setenv('SWEBENCH_LAB_CRAWLED_DATA', str(_scratch_crawled_data(tmp_path)))
    for v in ('OPENAI_KEYS', 'OPENAI_KEY', 'OPENAI_API_KEY', 'BASE_URL'): monkeypatch.delenv(v, raising=False)
    key = 'sk-proj-LOOPBACKkey0123456789abcdefXYZ'
    monkeypatch.setenv('LOOPBACK_API_KEY', key)
    with FaultyOpenAIServer() as srv:
        (tmp_path / 'models.yaml').write_text(
            f'loopback-api: {{base_url: "{srv.base_url}", api_key_env: LOOPBACK_API_KEY, context_limit: 100000, '
            f'price_in: 1.0e-06, price_out: 2.0e-06}}\n')
        monkeypatch.setenv('SWEBENCH_LAB_MODELS', str(tmp_path / 'models.yaml'))
        rdir = execute_run('demo', {**TINY['demo'], 'api_model': 'loopback-api'}, log_to_console=False)
        assert sum(srv.calls.values()) == 8            # 4 tasks x 2 prompt variants
    _check_record(rdir, 'demo', {**TINY['demo'], 'api_model': 'loopback-api'})
    _check_demo(rdir, extra_models=1)
    import csv
    rates = {(r['model'], r['run_id']): r for r in csv.DictReader(open(rdir / 'rates.csv'))}
    assert {m for m, _ in rates} == {'base', 'trained', 'gold', 'empty', 'loopback-api'}
    preds = results_tmp / 'loopback-api' / 'T=0' / 'n=1' / 'demo-task-instances_0.5_body_issue.jsonl'
    recs = [json.loads(l) for l in preds.read_text().splitlines()]
    assert len(recs) == 4 and all(r['status'] == 'ok' and r['cost'] == 100 * 1e-6 + 20 * 2e-6 for r in recs)
    for f in results_tmp.rglob('*'):
        if f.is_file(): assert key.encode() not in f.read_bytes(), f
