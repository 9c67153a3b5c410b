"""The adversarial suite: hostile patches, interrupted and killed runs, floods of output, poisoned environments, bad
predictions, and a model server under bad requests. Every case here once produced a false verdict, a lost result or a
wedged server.

Patch attacks are data: `tests/adversarial/<name>.yaml` says what the attack is, which demo instance and backends it
targets and what the report must say; `<name>.diff` is the patch. Add a pair to add a case."""
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import DATA, DEMO_SWE, ROOT, run_cli, tagged_containers
from swebench_lab.core import write_jsonl_atomic
from swebench_lab.build_image import exit_code_script
from swebench_lab.data import load_instances
from swebench_lab.run_evaluation import evaluate_instance, run_evaluation

CASES = sorted((Path(__file__).parent / 'adversarial').glob('*.yaml'))
SLUG_HANG = (Path(__file__).parent / 'data' / 'slug_hang.diff')


@pytest.fixture(autouse=True)
def _results(lab_env): pass


_containers = tagged_containers


def demo_record(instance: str, reinstall: bool = False, eval_type: str | None = None) -> dict:
    """A demo SWE-bench record; `reinstall` puts the official scripts' reinstall step (`pip install -e .`) before the tests;
    `eval_type='exit_code'` makes it a record graded by its eval script's exit code (as transferred datasets are)."""
    rec = next(r for r in load_instances(DEMO_SWE) if r['instance_id'] == instance)
    if eval_type == 'exit_code':
        rec = {**rec, 'eval_type': 'exit_code', 'eval_script': exit_code_script(rec, 'python -m pytest -rA -p no:cacheprovider')}
    if reinstall:
        rec = {**rec, 'eval_script': rec['eval_script'].replace(": '>>>>> Start Test Output'",
                                                                "python -m pip install -e .\n: '>>>>> Start Test Output'", 1)}
    return rec


# --- hostile patches (data-driven) -----------------------------------------------------------------

@pytest.mark.docker
@pytest.mark.parametrize('backend', ['docker', 'local'])
@pytest.mark.parametrize('case_file', CASES, ids=[c.stem for c in CASES])
def test_patch_attack(case_file, backend, tmp_path):
    case = yaml.safe_load(case_file.read_text())
    if backend not in case.get('backends', ['docker']): pytest.skip(f'{case_file.stem} targets {case["backends"]}')
    rec = demo_record(case['instance'], case.get('reinstall', False), case.get('eval'))
    rep = evaluate_instance(rec, case_file.with_suffix('.diff').read_text(), backend, timeout=180, out_dir=tmp_path)[rec['instance_id']]
    exp = {**case['expect'], **(case.get('expect_by_backend') or {}).get(backend, {})}   # a backend without read-only mounts
    why = f"{case_file.stem}: {json.dumps({k: v for k, v in rep.items() if k != 'tests_status'})[:1500]}"
    assert rep['resolved'] is exp['resolved'], why
    assert rep['status'] == exp['status'], why
    reset = [a['path'] for a in rep.get('test_infrastructure_reset', [])]
    assert set(exp.get('reset', [])) <= set(reset), why
    if 'suspicious' in exp: assert bool(rep.get('suspicious')) is exp['suspicious'], why
    if backend == 'docker': assert _containers() == []


@pytest.mark.docker
@pytest.mark.parametrize('patch,why', [
    ('diff --git a/.git/hooks/post-checkout b/.git/hooks/post-checkout\nnew file mode 100755\n--- /dev/null\n'
     '+++ b/.git/hooks/post-checkout\n@@ -0,0 +1,2 @@\n+#!/bin/sh\n+echo pwned\n', 'inside .git/'),
    ('--- a/../../etc/motd\n+++ b/../../etc/motd\n@@ -0,0 +1 @@\n+pwned\n', 'outside the repository'),
    ('diff --git a/link b/link\nnew file mode 120000\n--- /dev/null\n+++ b/link\n@@ -0,0 +1 @@\n+/etc\n\\ No newline at end of file\n',
     'symbolic link'),
])
def test_unsafe_patches_are_refused(patch, why, tmp_path):
    "Paths in .git/ or outside the repository, and symbolic links, are refused before any fallback (patch --fuzz) runs."
    rec = demo_record('demo__textkit-1')
    rep = evaluate_instance(rec, patch, 'docker', timeout=60, out_dir=tmp_path)[rec['instance_id']]
    assert (rep['status'], rep['patch_successfully_applied']) == ('patch_not_applied', False)
    assert why in (tmp_path / 'test_output.log').read_text()


# --- interrupted and killed runs ---------------------------------------------------------------------

def _start_hanging_run(tmp_path, *extra):
    preds = tmp_path / 'preds.jsonl'
    write_jsonl_atomic(preds, [{'instance_id': r['instance_id'], 'model_patch': SLUG_HANG.read_text()} for r in load_instances(DEMO_SWE)])
    cmd = [sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE), '--model', 'hang',
           '--run_id', 'demo', '--predictions_path', str(preds), '--max_workers', '2', *extra]
    return preds, subprocess.Popen(cmd, env={**os.environ, 'PYTHONUNBUFFERED': '1'}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_containers(p, n=1, limit=180):
    t0 = time.time()
    while len(_containers()) < n:
        assert p.poll() is None, p.stdout.read().decode()[-2000:]
        assert time.time() - t0 < limit
        time.sleep(0.2)


@pytest.mark.docker
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_no_report_and_a_rerun_grades(sig, tmp_path):
    "Ctrl-C / SIGTERM mid-run: exit 130, no container, no report for the instances in flight; the next run grades them."
    preds, p = _start_hanging_run(tmp_path, '--timeout', '300')
    _wait_for_containers(p, 2)
    time.sleep(3)                                   # the tests are running (and hanging) now
    p.send_signal(sig)
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 130, out[-2000:]
    assert _containers() == []
    evals = tmp_path / 'results' / 'evaluations' / 'demo' / 'hang'
    assert not list(evals.glob('*/report.json')), 'an interrupted instance left a report'
    # the re-run grades every instance (here the hang times out: a verdict, not a lost result)
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE), '--model', 'hang',
                '--run_id', 'demo', '--predictions_path', str(preds), '--timeout', '6', '--max_workers', '4')
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((evals / 'summary.json').read_text())
    assert (s['completed_instances'], s['timed_out_instances']) == (4, 4), s


@pytest.mark.docker
def test_ctrl_c_stops_validate_mid_build(tmp_path):
    """Ctrl-C while `validate` builds an instance image stops the build at once (its step container removed), not when the
    step ends: exit 130, no build container of the row left, no verdict recorded for it."""
    from swebench_lab.images import docker_client, LABEL
    iid = f'demo__textkit-stopbuild-{os.getpid()}'
    rows = tmp_path / 'rows.jsonl'
    write_jsonl_atomic(rows, [{**load_instances(DEMO_SWE)[0], 'instance_id': iid}])
    crawled = tmp_path / 'crawled'
    (crawled / 'envs').mkdir(parents=True)
    for d in ('bench', 'repos'): (crawled / d).symlink_to(ROOT / 'crawled_data' / d)
    recipe = yaml.safe_load((ROOT / 'crawled_data' / 'envs' / 'demo__textkit.yaml').read_text())
    recipe['0.1']['install'] = 'sleep 600'          # an install step that would hold the build for ten minutes
    (crawled / 'envs' / 'demo__textkit.yaml').write_text(yaml.safe_dump(recipe))
    p = subprocess.Popen([sys.executable, '-m', 'swebench_lab.run_evaluation', 'validate', '--dataset_name', str(rows),
                          '--instance_ids', iid], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env={**os.environ, 'PYTHONUNBUFFERED': '1', 'SWEBENCH_LAB_CRAWLED_DATA': str(crawled),
                              'SWEBENCH_LAB_RESULTS': str(tmp_path / 'results')})
    client, t0 = docker_client(), time.time()
    def building():
        cs = client.containers.list(filters={'label': [f'{LABEL}.instance={iid}']}, ignore_removed=True)
        return [c for c in cs if 'sleep 600' in ' '.join(c.attrs['Config'].get('Cmd') or [])]
    try:
        while not building():
            assert p.poll() is None, p.stdout.read().decode()[-2000:]
            assert time.time() - t0 < 600, 'the build never reached its install step'
            time.sleep(0.5)
        t1 = time.time()
        p.send_signal(signal.SIGINT)
        out = p.communicate(timeout=60)[0].decode()
        assert p.returncode == 130, out[-2000:]
        assert time.time() - t1 < 30, f'Ctrl-C took {time.time() - t1:.0f} s'
        assert building() == [] and client.containers.list(all=True, filters={'label': [f'{LABEL}.instance={iid}']}) == []
    finally:                                        # a failed check leaves no process nor build behind
        if p.poll() is None: p.kill(); p.wait()
        for c in client.containers.list(all=True, filters={'label': [f'{LABEL}.instance={iid}']}): c.remove(force=True)
    val = tmp_path / 'results' / 'evaluations' / 'validate' / 'rows' / 'validation.json'
    assert not val.exists() or not [r for r in json.loads(val.read_text())['instances'] if r.get('verdict')], val.read_text()


@pytest.mark.docker
def test_sigkill_leaves_containers_that_the_next_run_reaps(tmp_path):
    "A SIGKILLed evaluator's containers are removed by `remove` (and the next run); a live process's container is not."
    live = subprocess.Popen([sys.executable, '-c', (
        "import time, sys, signal\nfrom swebench_lab.recipes import InstanceSpec\nfrom swebench_lab.sandbox import open_sandbox\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"   # a background job inherits SIGINT ignored
        "from swebench_lab.data import load_instances\n"
        f"rec = load_instances({str(DEMO_SWE)!r})[0]\n"
        "with open_sandbox(InstanceSpec.from_record(rec), 'docker', labels={'swebench_lab.run': 'live-owner'}):\n"
        "    print('ready', flush=True); time.sleep(600)\n")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert live.stdout.readline().decode().strip() == 'ready'
        _, p = _start_hanging_run(tmp_path, '--timeout', '300')
        _wait_for_containers(p, 3)
        orphans = [c for c in _containers() if c.labels.get('swebench_lab.run') != 'live-owner']
        assert all(c.attrs['HostConfig']['AutoRemove'] for c in orphans)          # they would also remove themselves
        assert all(c.attrs['Config']['Cmd'][0] == 'sleep' for c in orphans)        # ... once their lifetime is over
        p.kill(); p.wait()
        r = run_cli(sys.executable, '-m', 'swebench_lab.environments', 'remove')
        assert r.returncode == 0, r.stderr
        assert eval(r.stdout.strip().splitlines()[-1])['containers'] >= 2, r.stdout
        left = _containers()
        assert [c.labels.get('swebench_lab.run') for c in left] == ['live-owner'], 'a live run lost its container, or an orphan stayed'
    finally:
        live.send_signal(signal.SIGINT)                       # Ctrl-C: its sandbox closes and removes its container
        try: live.wait(30)
        except subprocess.TimeoutExpired: live.kill(); live.wait(); raise AssertionError('the live process ignored Ctrl-C')
    time.sleep(1)
    assert _containers() == []


# --- floods, poison, bad input -----------------------------------------------------------------------

FLOOD = '''diff --git a/textkit/slug.py b/textkit/slug.py
--- a/textkit/slug.py
+++ b/textkit/slug.py
@@ -1,4 +1,9 @@
 """Turn titles into URL slugs."""
+import atexit
+import os
+
+atexit.register(lambda: [os.write(1, b"x" * (1 << 20)) for _ in range(2048)])   # 2 GiB to stdout
+
 import re
 import unicodedata
 
'''


@pytest.mark.docker
def test_two_gigabytes_of_output_keep_memory_flat(tmp_path):
    "A test run that prints 2 GiB: the evaluator keeps the head and tail (16 MiB), its memory stays flat, the verdict stands."
    from swebench_lab.data import load_instances
    from swebench_lab.images import build_instance_image
    from swebench_lab.recipes import InstanceSpec
    build_instance_image(InstanceSpec.from_record(load_instances(DEMO_SWE)[0]))   # built here: the measure is the evaluation's alone
    code = (f"import json, resource\nfrom swebench_lab.run_evaluation import evaluate_instance\nfrom swebench_lab.data import load_instances\n"
            f"rec = load_instances({str(DEMO_SWE)!r})[0]\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
            f"rep = evaluate_instance(rec, {FLOOD!r}, 'docker', timeout=600, out_dir={str(tmp_path / 'flood')!r})[rec['instance_id']]\n"
            "print(json.dumps({'rep': rep, 'before_mb': before, 'maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    rep = res['rep']
    assert rep['output_bytes'] >= 2 * 2**30 and rep['output_truncated'], rep
    assert rep['status'] == 'graded' and rep['resolved'] is False, rep      # the tests' own summary survived the flood
    assert (tmp_path / 'flood' / 'test_output.log').stat().st_size < 17 * 2**20
    # flat: what the evaluation adds to the process's peak (imports excluded: they vary with the machine's packages) is far
    # below the 2 GiB it read
    assert res['maxrss_mb'] - res['before_mb'] < 300, res


POISON = '''diff --git a/textkit/slug.py b/textkit/slug.py
--- a/textkit/slug.py
+++ b/textkit/slug.py
@@ -1,4 +1,9 @@
 """Turn titles into URL slugs."""
+import site
+
+with open(site.getsitepackages()[0] + "/zz_poison.pth", "w") as _f:
+    _f.write("import sys; sys.stderr.write('POISONED\\\\n')\\n")
+
 import re
 import unicodedata
 
'''


@pytest.mark.docker
def test_local_backend_environments_cannot_be_poisoned(tmp_path):
    "A patch that plants a .pth file in its local environment reaches no later run; a changed template is rebuilt."
    from swebench_lab.recipes import InstanceSpec
    from swebench_lab.sandbox import host_python, local_env_template, open_sandbox
    rec = demo_record('demo__textkit-1')
    spec = InstanceSpec.from_record(rec)
    with open_sandbox(spec, 'local') as box:              # the attack works on the environment it runs in ...
        box.write_file(f'{box.tmp}/poison.diff', POISON)
        assert box.run(f'git apply {box.tmp}/poison.diff && python -c "import textkit.slug"').exit_code == 0
        assert 'POISONED' in box.run('python -c pass').output
    rep = evaluate_instance(rec, POISON, 'local', timeout=120, out_dir=tmp_path / 'poison')[rec['instance_id']]
    assert rep['status'] == 'graded'
    gold = evaluate_instance(rec, rec['patch'], 'local', timeout=120, out_dir=tmp_path / 'gold')[rec['instance_id']]
    assert gold['resolved'] and 'POISONED' not in (tmp_path / 'gold' / 'test_output.log').read_text()   # ... and on no other
    # poison the template itself: the next sandbox sees the change and rebuilds it
    tmpl = local_env_template(spec, host_python(spec.recipe))
    sp = next(tmpl.glob('lib/python*/site-packages'))
    (sp / 'zz_poison.pth').write_text("import sys; sys.stderr.write('POISONED\\n')\n")
    gold = evaluate_instance(rec, rec['patch'], 'local', timeout=120, out_dir=tmp_path / 'gold2')[rec['instance_id']]
    assert gold['resolved'] and 'POISONED' not in (tmp_path / 'gold2' / 'test_output.log').read_text()
    assert not (sp / 'zz_poison.pth').exists()


BAD_PREDICTIONS = {
    'number.jsonl': ('{"instance_id": "demo__textkit-1", "model_patch": 5}\n', 'number.jsonl:1: demo__textkit-1: model_patch must be a string'),
    'object.json': ('[{"instance_id": "demo__textkit-1", "model_patch": {"a": 1}}]', 'object.json: [0]: demo__textkit-1: model_patch must be a string'),
    'list_id.jsonl': ('{"instance_id": ["demo__textkit-1"], "model_patch": "x"}\n', 'list_id.jsonl:1: instance_id must be a non-empty string'),
    'no_id.json': ('[{"model_patch": "x"}]', 'no_id.json: [0]: instance_id must be a non-empty string'),
    'empty.jsonl': ('', 'no predictions'),
    'dupes.jsonl': ('{"instance_id": "demo__textkit-1", "model_patch": "a"}\n{"instance_id": "demo__textkit-1", "model_patch": "b"}\n',
                    'dupes.jsonl:2: demo__textkit-1: a second prediction with a different patch'),
}


@pytest.mark.parametrize('name', BAD_PREDICTIONS)
def test_malformed_predictions_are_one_line_errors(name, tmp_path):
    text, expected = BAD_PREDICTIONS[name]
    (tmp_path / name).write_text(text)
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE), '--model', 'm',
                '--predictions_path', str(tmp_path / name), '--backend', 'local')
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith('error: ') and expected in r.stderr, r.stderr
    assert not (tmp_path / 'results' / 'evaluations').exists(), 'folders were made for a run that never started'


def test_a_folder_as_predictions_is_an_error(tmp_path):
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE), '--model', 'm',
                '--predictions_path', str(tmp_path), '--backend', 'local')
    assert r.returncode == 2 and 'is a folder' in r.stderr and 'Traceback' not in r.stderr


def test_doubtful_predictions_are_reported(tmp_path):
    "Unknown ids, instances without a prediction (or without model_patch) and repeated ids are listed, on screen and in the summary."
    recs = load_instances(DEMO_SWE)
    preds = tmp_path / 'p.jsonl'
    write_jsonl_atomic(preds, [{'instance_id': recs[0]['instance_id'], 'model_patch': recs[0]['patch']},
                               {'instance_id': recs[0]['instance_id'], 'model_patch': recs[0]['patch']},
                               {'instance_id': recs[1]['instance_id']},
                               {'instance_id': 'nobody__nothing-1', 'model_patch': 'x'}])
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE), '--model', 'm',
                '--predictions_path', str(preds), '--backend', 'local')
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / 'results' / 'evaluations' / 'demo-swebench' / 'm' / 'summary.json').read_text())
    assert s['unknown_prediction_ids'] == ['nobody__nothing-1']
    assert s['missing_prediction_ids'] == sorted(r_['instance_id'] for r_ in recs[1:])
    assert s['duplicate_prediction_ids'] == [recs[0]['instance_id']]
    assert s['resolved_ids'] == [recs[0]['instance_id']]
    assert 'unknown_prediction_ids' in r.stdout and 'nobody__nothing-1' in r.stdout


@pytest.mark.quick
def test_a_50mb_patch_is_summarised_quickly(tmp_path):
    "The summary's similarity metrics are bounded: a 50 MB prediction does not take minutes."
    from swebench_lab.run_evaluation import summarize
    recs = load_instances(DEMO_SWE)[:1]
    big = 'diff --git a/big.txt b/big.txt\nnew file mode 100644\n--- /dev/null\n+++ b/big.txt\n@@ -0,0 +1,1000000 @@\n' + '+' + 'y' * 49 + '\n' * 1
    big = big + ('+' + 'y' * 49 + '\n') * 1_000_000
    assert len(big) > 50_000_000
    t0 = time.perf_counter()
    s = summarize(recs, {recs[0]['instance_id']: big}, tmp_path)
    dt = time.perf_counter() - t0
    assert s['edit_similarity'] < 0.001 and s['file_hit_rate'] == 0.0
    print(f'summary of a {len(big) / 1e6:.0f} MB patch: {dt:.2f}s')


@pytest.mark.quick
def test_redaction_keeps_patch_text_and_masks_known_secrets(monkeypatch):
    from swebench_lab.core import redact
    patch = '+from sklearn import x  # sk-learn-estimator-configuration-key and Bearer sk-proj-looks-like-a-key-123456'
    assert redact(patch) == patch                                        # shaped like a key is not a key
    monkeypatch.setenv('OPENAI_KEY', 'sk-real-secret-value-0123456789')
    assert 'sk-real-secret-value-0123456789' not in redact(f'key=sk-real-secret-value-0123456789 {patch}')
    assert patch in redact(f'key=sk-real-secret-value-0123456789 {patch}')


# --- the model server under bad requests ------------------------------------------------------------

def test_server_survives_the_bad_request_mix(tmp_path, tiny):
    "n=2 at temperature 0, huge seeds, non-string parts, 40 failing streams and abandoned streams: no 500, no hang, no leak."
    from swebench_lab.serving import serve_in_background, bad_request_mix
    p = tiny
    with serve_in_background(str(p['base']), f"trained:{p['trained']}", log_path=tmp_path / 'server.log',
                             extra_args=['--served-model-name', 'tiny']) as h:
        res = bad_request_mix(h.url, model='tiny', failing_streams=40, abandoned_streams=5)
        print(json.dumps(res, indent=1))
        assert res['bad_statuses'] == {'n2_temperature0': 200, 'seed_2_70': 400, 'non_string_part': 400, 'image_part': 400}
        assert res['failing_streams_ended_with_error'] == 40
        assert res['abandoned_generations_stopped'] and res['active_after'] == 0
        assert res['threads_after'] <= res['threads_before'] + 2, res
        assert res['normal_ok_after'] == res['normal_requests']
        # SIGTERM during a long generation stops the server within seconds
        import threading, httpx
        t = threading.Thread(target=lambda: httpx.post(h.base_url + '/chat/completions', timeout=60, json={
            'model': 'tiny', 'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 4000, 'temperature': 0}), daemon=True)
        t.start()
        while httpx.get(h.url + '/health').json()['active'] == 0: time.sleep(0.05)
        t0 = time.time(); h.proc.send_signal(signal.SIGTERM)
        h.proc.wait(timeout=15)
        assert time.time() - t0 < 10
