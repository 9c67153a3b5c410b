"""build_image in real Docker with a scripted model (agenthub.ScriptedPolicy: a loopback OpenAI-compatible server replaying
fixed replies): a Dockerfile missing a dependency is repaired and its image then evaluates gold resolved; a model that never
fixes it, an eval script that passes without the gold patch, one that runs past the time limit, and unusable replies all end
in _failed.json with their reason. No container is left behind."""
import json
import sys
from pathlib import Path

import pytest

from conftest import DATA, DEMO_SWE, ROOT, run_cli, tagged_containers
from swebench_lab.scripted_policy import ScriptedPolicy
from swebench_lab.build_image import build_images, export_instances, repair_model

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group('build_image')]   # one worker: the images they build share content-addressed tags


@pytest.fixture(autouse=True)
def _env(lab_env): pass


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    "The demo instances in build_image's input format (export), and a Dockerfile for the first that lacks pytest."
    import os
    os.environ.setdefault('SWEBENCH_LAB_CRAWLED_DATA', str(ROOT / 'crawled_data'))
    d = tmp_path_factory.mktemp('export')
    entries = export_instances(str(DEMO_SWE), d / 'demo.json')
    from swebench_lab.images import base_image_tag, build_base_image
    base = build_base_image('bookworm')
    good = entries[0]['dockerfile']
    broken = good.replace(good.splitlines()[0], f'FROM {base}\nRUN python3 -m venv /opt/venv', 1)
    return entries, broken


def _write(tmp_path, entries):
    (tmp_path / 'in.json').write_text(json.dumps(entries))
    return tmp_path / 'in.json'


def test_a_missing_dependency_is_repaired_and_the_image_evaluates(exported, tmp_path):
    entries, broken = exported
    e = {**entries[0], 'dockerfile': broken}
    script = {f"Instance {e['instance_id']} ": [f"The tests need pytest, which the image lacks.\n<dockerfile>\n{entries[0]['dockerfile']}</dockerfile>"]}
    with ScriptedPolicy(script) as p:
        s = build_images(_write(tmp_path, [e]), tmp_path / 'run', repair_model('scripted-policy', p.base_url), max_iterations=3,
                         eval_timeout=120, progress=False)
    assert (s['succeeded'], s['failed']) == (1, 0), s
    d = tmp_path / 'run' / e['instance_id']
    c1 = json.loads((d / 'iteration_1' / 'check.json').read_text())
    assert (c1['ok'], c1['check']) == (False, 'eval_gold')
    assert 'No module named pytest' in (d / 'iteration_1' / 'test_gold.log').read_text()
    assert json.loads((d / 'iteration_2' / 'check.json').read_text())['ok'] and (d / 'iteration_1' / 'reply.txt').exists()
    transferred = json.loads((tmp_path / 'run' / 'in_transferred.json').read_text())
    assert transferred[0]['dockerfile'] == entries[0]['dockerfile'] and transferred[0]['docker_image'].startswith('swebench-lab/transfer:')
    # the transferred dataset feeds run_evaluation directly: its image as is, graded by the exit-code marker
    for preds, resolved in (('gold', 1), ('empty', 0)):
        r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(tmp_path / 'run' / 'in_transferred.json'),
                    '--predictions_path', preds, env={'SWEBENCH_LAB_RESULTS': str(tmp_path / 'results')})
        assert r.returncode == 0, r.stderr
        summ = json.loads((tmp_path / 'results' / 'evaluations' / 'in_transferred' / preds / 'summary.json').read_text())
        assert summ['resolved_instances'] == resolved, summ
    main = json.loads((tmp_path / 'run' / 'summary_main.json').read_text())
    assert (main['total'], main['success_rate'], main['failed_instances']) == (1, 1.0, [])


def test_failures_each_end_in_failed_json_with_their_reason(exported, tmp_path):
    entries, broken = exported
    a = {**entries[0], 'dockerfile': broken}                                      # the model never fixes it
    b = {**entries[1], 'eval_script': entries[1]['eval_script'].replace(                # passes without the gold patch
        entries[1]['eval_script'].split(": '>>>>> Start Test Output'\n")[1].split('\n')[0],
        'python -m pytest -q -p no:cacheprovider tests/test_wrap.py')}
    c = {**entries[2], 'eval_script': entries[2]['eval_script'].replace("rc=$?", "sleep 60\nrc=$?")}   # past the time limit
    d = {**entries[3], 'dockerfile': broken}                                       # unusable replies
    scripts = {f"Instance {a['instance_id']} ": [f"Trying this.\n<dockerfile>\n{broken}RUN true\n</dockerfile>"],
               f"Instance {d['instance_id']} ": ['I am not sure what to do.', 'Still unsure.', 'No idea.']}
    with ScriptedPolicy(scripts, default=['Nothing to change.']) as p:
        s = build_images(_write(tmp_path, [a, b, c, d]), tmp_path / 'run', repair_model('scripted-policy', p.base_url), max_iterations=2,
                         eval_timeout=8, max_workers=2, progress=False)
    assert (s['succeeded'], s['failed']) == (0, 4), s
    failed = {f['instance_id']: f['failure_reason'] for f in json.loads((tmp_path / 'run' / 'in_failed.json').read_text())}
    assert 'after 2 iteration(s): eval_gold' in failed[a['instance_id']] and 'tests fail' in failed[a['instance_id']]
    assert 'eval_unpatched' in failed[b['instance_id']] and 'prove nothing' in failed[b['instance_id']]
    assert 'did not finish within 8s' in failed[c['instance_id']]
    assert 'eval_gold' in failed[d['instance_id']]
    it1 = tmp_path / 'run' / d['instance_id'] / 'iteration_1'
    assert json.loads((it1 / 'cost.json').read_text()) == {'cost': 0.0, 'replies': 3, 'usable': False}
    assert (it1 / 'reply.txt').read_text().count('----- next reply -----') == 2
    summary = {r['instance_id']: r for r in json.loads((tmp_path / 'run' / 'summary.json').read_text())}
    assert all(not r['success'] and r['reason'] for r in summary.values())
    # failed iterations' images are removed
    from swebench_lab.build_image import transfer_tag
    from swebench_lab.images import docker_client, image_exists
    tried = [transfer_tag(a, broken), transfer_tag(a, broken + 'RUN true\n'), transfer_tag(b, b['dockerfile'])]
    assert not [t for t in tried if image_exists(docker_client(), t)]


def test_the_cli_with_skip_existing(exported, tmp_path):
    entries, _ = exported
    (tmp_path / 'in.json').write_text(json.dumps(entries[:1]))
    with ScriptedPolicy({}, default=['<dockerfile>\nFROM nothing\n</dockerfile>']) as p:
        args = [sys.executable, '-m', 'swebench_lab.build_image', '--input', str(tmp_path / 'in.json'), '--output', str(tmp_path / 'run'),
                '--max-iterations', '2', '--eval-timeout', '120', '--max-workers', '2', '--model_name', 'scripted-policy', '--base_url', p.base_url]
        r = run_cli(*args)
        assert r.returncode == 0 and '1/1 environments proved' in r.stdout, r.stdout + r.stderr
        first = (tmp_path / 'run' / entries[0]['instance_id'] / 'result.json').read_text()
        r = run_cli(*args, '--skip-existing')
        assert r.returncode == 0 and (tmp_path / 'run' / entries[0]['instance_id'] / 'result.json').read_text() == first
    r = run_cli(sys.executable, '-m', 'swebench_lab.build_image', '--input', str(tmp_path / 'nope.json'), '--output', str(tmp_path / 'x'),
                '--model_name', 'scripted-policy', '--base_url', 'http://127.0.0.1:9/v1', '--context_limit', '1000')
    assert r.returncode == 2 and 'no such input file' in r.stderr
