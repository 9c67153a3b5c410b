"""The views a researcher opens first, on real runs: an agent batch of the scripted policy (a loopback
OpenAI-compatible server replaying the gold patch through mini-swe-agent's bash tool, graded by the real harness) and
an evaluation of the gold patches, both logging their summaries to TensorBoard; an executed run notebook; synthetic
runs around them. Then the results view over them (index, table, paired comparison, one instance with its trajectory)
and the documentation site built from the notebooks, opened page by page in headless Chromium."""
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO_SWE, ROOT
from swebench_lab.data import load_instances
from swebench_lab.results import list_runs, compare_runs, instance_view, synthetic_runs
from swebench_lab.tracking import read_scalars

pytestmark = pytest.mark.xdist_group('docs')


@pytest.fixture(scope='module')
def results_root(tmp_path_factory):
    "A results folder with real agent, evaluation and notebook runs beside synthetic ones."
    from swebench_lab.agenthub import load_scaffold, runagent_multiple
    from swebench_lab.run_evaluation import run_evaluation
    from swebench_lab.runs import execute_run
    from swebench_lab.scripted_policy import scripted_policy_for
    d = tmp_path_factory.mktemp('results')
    old = os.environ.get('SWEBENCH_LAB_RESULTS')
    os.environ['SWEBENCH_LAB_RESULTS'] = str(d)
    try:
        synthetic_runs(d, 12, instances=8)
        recs = load_instances(DEMO_SWE)[:2]
        with scripted_policy_for(recs, load_scaffold('mini_swe_agent', False)) as policy:
            agents = runagent_multiple(str(DEMO_SWE), d / 'agents' / 'scripted', 'scripted', 'openai/scripted-policy', k=2,
                                       backend='local', base_url=policy.base_url, progress=False, report_to='tensorboard')
        ev = run_evaluation(str(DEMO_SWE), 'gold', 'docs-demo', 'gold', backend='local', max_workers=2, progress=False,
                            report_to='tensorboard')
        execute_run('results', {'eval_root': str(d / 'evaluations'), 'models': ['model-0', 'model-1']}, out_root=d / 'runs',
                    log_to_console=False)
        yield {'dir': d, 'agents': agents, 'eval': ev, 'recs': recs}
    finally:
        if old is None: os.environ.pop('SWEBENCH_LAB_RESULTS', None)
        else: os.environ['SWEBENCH_LAB_RESULTS'] = old


def test_agent_and_evaluation_summaries_reach_tensorboard(results_root):
    d, a, ev = results_root['dir'], results_root['agents'], results_root['eval']
    assert a['reward_1'] == 2, a
    assert read_scalars(d / 'agents' / 'scripted')['reward_1'] == [(0, 2.0)]
    s = read_scalars(Path(d) / 'evaluations' / 'docs-demo' / 'gold')
    assert s['resolved_instances'] == [(0, float(ev['resolved_instances']))] and ev['resolved_instances'] == ev['total_instances'] == 4


def test_results_view_lists_compares_and_opens_real_runs(results_root):
    d, recs = results_root['dir'], results_root['recs']
    df = list_runs(d)
    assert {'evaluation', 'agents', 'notebook', 'training'} <= set(df['kind'])
    real = df.set_index('id').loc[['evaluations/docs-demo/gold', 'agents/scripted']]
    assert real['resolved'].tolist() == [4, 2] and real['instances'].tolist() == [4, 2]
    assert (df[df['kind'] == 'notebook']['name'] == 'results').any()
    cmp = compare_runs('evaluations/docs-demo/gold', 'agents/scripted', d)
    assert cmp['instances'] == 2 and cmp['pairs'][0]['improved'] == cmp['pairs'][0]['regressed'] == []
    page = instance_view('agents/scripted', recs[0]['instance_id'], d)
    assert 'swbl-traj' in page and 'submitted' in page            # the trajectory, through the viewer
    env = {**os.environ, 'SWEBENCH_LAB_RESULTS': str(d)}
    r = subprocess.run([sys.executable, '-m', 'swebench_lab.results', 'list'], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0 and 'agents/scripted' in r.stdout and f'{len(df)} runs' in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, '-m', 'swebench_lab.results', 'show', 'scripted', recs[0]['instance_id']],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0 and 'diff --git' in r.stdout and 'trajectory' in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, '-m', 'swebench_lab.results', 'compare', 'scripted', 'no-such-run'],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith('error: no run matches') and r.stderr.count('\n') == 1


def test_docs_site_builds_and_every_page_loads_in_chromium(results_root, tmp_path):
    from swebench_lab.docsite import DocsError, build_site, check_site, failures, process_notebooks, provision_browser
    try: provision_browser()
    except DocsError as e:
        if os.environ.get('SWEBENCH_LAB_REQUIRE_DOCKER') == '1': raise
        pytest.skip(str(e))
    site = tmp_path / '_docs'
    proc = process_notebooks()
    pages = build_site(site, proc, results_root['dir'])
    for p in ('index.html', 'analysis.html', 'results.html', 'training.html', 'tracking.html', 'docsite.html',
              'runs/results.html', 'views/results.html', 'views/trajectory.html', 'gallery.html'):
        assert p in pages, sorted(pages)
    report = check_site(site)
    assert not failures(report), failures(report)
    assert len(report) == len(pages)
    text = html.unescape(re.sub('<[^>]+>', '', (site / 'analysis.html').read_text()))
    assert 'def wilson_interval(' in text and 'Wilson score interval' in text      # signature and docstring (show_doc)
    assert 'test_close(wilson_interval(5, 10)' in text                             # with the check that follows it
    build_site(site, proc, results_root['dir'])                                    # the gallery shows the screenshots
    shots = sorted((site / 'screenshots').glob('*.png'))
    assert {'index.png', 'analysis.png', 'runs__results.png', 'views__results.png', 'views__trajectory.png'} <= {s.name for s in shots}
    assert all(s.stat().st_size > 5000 for s in shots)
    assert 'screenshots/views__results.png' in (site / 'gallery.html').read_text()
    print(f'{len(shots)} screenshots in {site / "screenshots"}')
