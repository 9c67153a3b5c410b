"""The ray executor on a real Ray cluster started by the tests on this machine (a head with no CPUs, so every task runs on
the worker nodes, plus two worker nodes), with real Docker: the demo evaluation gives the local executor's reports, a
worker node killed mid-run loses nothing and grades nothing twice, Ctrl-C on the driver cancels the tasks and removes
their containers, and the agent runner, build_image and the RL environment's batch run their instances as tasks."""
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import DATA, DEMO_SWE, ROOT, one_at_a_time, run_cli, tagged_containers
from swebench_lab.executors import RAY_STARTUP_ENV

pytest.importorskip('ray', reason='the ray executor needs the cluster extra: pip install -e ".[cluster]"')
pytestmark = [pytest.mark.docker, pytest.mark.alone]   # after the parallel tests, in one process: the cluster fixture is started once

RAY = str(Path(sys.executable).parent / 'ray')
NOOP = 'diff --git a/NOTES.md b/NOTES.md\nnew file mode 100644\n--- /dev/null\n+++ b/NOTES.md\n@@ -0,0 +1 @@\n+a note\n'
MISSING = 'diff --git a/missing.py b/missing.py\n--- a/missing.py\n+++ b/missing.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n'
# Ray enables token authentication once ~/.ray/auth_token exists (any local ray.init() writes one), and a driver that
# connects without the token hangs: the test cluster and every driver share a token of their own.
AUTH = {'RAY_AUTH_MODE': 'token', 'RAY_AUTH_TOKEN': secrets.token_hex(32)}
HANG = ('diff --git a/textkit/__init__.py b/textkit/__init__.py\n--- a/textkit/__init__.py\n+++ b/textkit/__init__.py\n'
        '@@ -1 +1,2 @@\n \"\"\"textkit: small text utilities.\"\"\"\n+import time; time.sleep(300)\n')


class Cluster:
    """A head (0 CPUs) and worker nodes, each `ray start --block` in its own process group (so one can be killed alone).
    A node is up when its `ray start` says so (Ray prints that once the node is registered with the head)."""
    def __init__(self, workers: int = 2):
        from swebench_lab.serving import free_port
        self.port = free_port()
        self.address = f'127.0.0.1:{self.port}'
        self.logs = Path(tempfile.mkdtemp(prefix='ray-cluster-'))
        self.head, self.workers = None, []
        try:
            self.head = self._start('head', ['--head', '--port', str(self.port), '--num-cpus', '0', '--include-dashboard=false'])
            for i in range(workers):          # one at a time: raylets starting together on one host can collide
                self.workers.append(self._start(f'worker-{i}', ['--address', self.address, '--num-cpus', '1']))
        except BaseException:
            self.stop(); raise

    def _start(self, name: str, args: list[str], limit: float = 300, tries: int = 3):
        log = self.logs / f'{name}.log'
        with open(log, 'w') as out:
            p = subprocess.Popen([RAY, 'start', '--block', '--disable-usage-stats', '--node-ip-address', '127.0.0.1',
                                  '--object-store-memory', '80000000', *args], stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, env={**os.environ, 'RAY_ADDRESS': '', **RAY_STARTUP_ENV, **AUTH})
        t0 = time.monotonic()
        while 'Ray runtime started' not in (text := log.read_text(errors='replace')):
            if p.poll() is not None or time.monotonic() - t0 > limit:
                self.kill(p)
                # on a loaded machine a node can miss Ray's own 30 s registration deadline: start it again
                if tries > 1 and 'timed out during startup' in text: return self._start(name, args, limit, tries - 1)
                raise RuntimeError(f'Ray {name} did not start: {text[-2000:]}')
            time.sleep(0.5)
        return p

    def kill(self, p):
        try: os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError: pass
        p.wait()

    def stop(self):
        for p in self.workers + [self.head]:
            if p is not None: self.kill(p)


@pytest.fixture(scope='module', autouse=True)
def _one_ray():
    "One Ray cluster at a time on this machine, whichever pytest worker (or run) starts it."
    with one_at_a_time('ray'): yield


@pytest.fixture(scope='module')
def cluster():
    c = Cluster(2)
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def _env(lab_env, monkeypatch):
    monkeypatch.delenv('RAY_ADDRESS', raising=False)
    for k, v in AUTH.items(): monkeypatch.setenv(k, v)


def _preds(path: Path, patches: dict) -> Path:
    path.write_text(''.join(json.dumps({'instance_id': i, 'model_name_or_path': 'm', 'model_patch': p}) + '\n' for i, p in patches.items()))
    return path


def _eval(*extra, run_id, preds, timeout=600):
    return run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE), '--model', 'm',
                   '--run_id', run_id, '--predictions_path', str(preds), '--max_workers', '2', *extra, timeout=timeout)


VOLATILE = {'duration_s', 'test_duration_s'}   # timings


def _reports(d: Path) -> dict:
    out = {}
    for f in sorted(d.glob('*/report.json')):
        iid = f.parent.name
        out[iid] = ({k: v for k, v in json.loads(f.read_text())[iid].items() if k not in VOLATILE}, sorted(p.name for p in f.parent.iterdir()))
    return out


def test_evaluation_through_ray_gives_the_local_reports(cluster, tmp_path):
    from swebench_lab.data import load_instances
    recs = load_instances(DEMO_SWE)
    preds = _preds(tmp_path / 'p.jsonl', {recs[0]['instance_id']: recs[0]['patch'], recs[1]['instance_id']: NOOP,
                                          recs[2]['instance_id']: MISSING, recs[3]['instance_id']: ''})
    r_local = _eval(run_id='local', preds=preds)
    r_ray = _eval('--executor', 'ray', '--ray-address', cluster.address, run_id='ray', preds=preds)
    assert r_local.returncode == 0 and r_ray.returncode == 0, (r_local.stderr[-2000:], r_ray.stderr[-2000:])
    ev = tmp_path / 'results' / 'evaluations'
    local, ray = _reports(ev / 'local' / 'm'), _reports(ev / 'ray' / 'm')
    assert len(local) == 4 and local == ray
    assert [local[r['instance_id']][0]['status'] for r in recs] == ['graded', 'graded', 'patch_not_applied', 'empty_patch']
    s = json.loads((ev / 'ray' / 'm' / 'summary.json').read_text())
    assert s['executor'] == 'ray' and sum(s['nodes'].values()) == 4 and s['resolved_instances'] == 1
    assert 'nodes' in r_ray.stdout


def test_a_worker_node_killed_mid_run_loses_nothing(tmp_path):
    "Tasks of the killed node run again on the other; every instance is graded once; the dead tasks' containers are removed."
    from swebench_lab.data import load_instances
    c = Cluster(2)
    try:
        recs = load_instances(DEMO_SWE)
        preds = _preds(tmp_path / 'p.jsonl', {r['instance_id']: r['patch'] for r in recs})
        _eval(run_id='warm', preds=preds)            # images built, so the run below spends its time in containers
        p = subprocess.Popen([sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE), '--model', 'm',
                              '--run_id', 'ray', '--predictions_path', str(preds), '--max_workers', '2', '--executor', 'ray',
                              '--ray-address', c.address], cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not tagged_containers(running=True): time.sleep(0.05)
        assert tagged_containers(running=True), 'no task started a container'
        c.kill(c.workers[0])
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        s = json.loads((tmp_path / 'results' / 'evaluations' / 'ray' / 'm' / 'summary.json').read_text())
        assert (s['resolved_instances'], s['error_instances'], sum(s['nodes'].values())) == (4, 0, 4), s
        assert sorted(f.parent.name for f in (tmp_path / 'results' / 'evaluations' / 'ray' / 'm').glob('*/report.json')) == sorted(r['instance_id'] for r in recs)
    finally:
        c.stop()


def test_ctrl_c_cancels_the_tasks_and_removes_their_containers(cluster, tmp_path):
    from swebench_lab.data import load_instances
    recs = load_instances(DEMO_SWE)[:2]
    preds = _preds(tmp_path / 'p.jsonl', {r['instance_id']: HANG for r in recs})
    p = subprocess.Popen([sys.executable, '-m', 'swebench_lab.run_evaluation', 'run', '--dataset_name', str(DEMO_SWE), '--model', 'm',
                          '--run_id', 'hang', '--predictions_path', str(preds), '--max_workers', '2', '--executor', 'ray', '--timeout', '600',
                          '--ray-address', cluster.address, '--instance_ids', *[r['instance_id'] for r in recs]],
                         cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(tagged_containers(running=True)) < 2: time.sleep(0.2)
    assert len(tagged_containers(running=True)) == 2
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 130, err[-2000:]
    assert tagged_containers() == []
    assert not list((tmp_path / 'results' / 'evaluations' / 'hang' / 'm').glob('*/report.json'))


def test_agents_build_image_and_rl_batches_run_as_tasks(cluster, tmp_path):
    from swebench_lab.scripted_policy import gold_script, scripted_policy_for
    from swebench_lab.agenthub import load_scaffold, runagent_multiple
    from swebench_lab.data import load_instances
    recs = load_instances(DEMO_SWE)[:2]
    with scripted_policy_for(recs, load_scaffold('mini_swe_agent', False)) as pol:
        code = ("import json, sys; from swebench_lab.agenthub import runagent_multiple; "
                f"s = runagent_multiple({str(DEMO_SWE)!r}, {str(tmp_path / 'agents')!r}, 'x', 'openai/scripted-policy', k=2, "
                f"base_url={pol.base_url!r}, progress=False, executor='ray', ray_address={cluster.address!r}); print(json.dumps(s))")
        r = run_cli(sys.executable, '-c', code)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert (s['reward_1'], s['executor'], sum(s['nodes'].values())) == (2, 'ray', 2)
    lines = (tmp_path / 'agents' / 'trajectories.jsonl').read_text().splitlines()
    assert len(lines) == 2 and all((tmp_path / 'agents' / i['instance_id'] / 'report.json').exists() for i in recs)
    assert all((tmp_path / 'agents' / i['instance_id'] / f"{i['instance_id']}.traj.json").exists() for i in recs)
    # build_image: two exported environments proved on the cluster (no repair needed: no model)
    r = run_cli(sys.executable, '-m', 'swebench_lab.build_image', 'export', '--dataset_name', str(DEMO_SWE), '--output', str(tmp_path / 'in.json'),
                '--instance_ids', *[x['instance_id'] for x in recs])
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import json; from swebench_lab.build_image import build_images; "
            f"print(json.dumps(build_images({str(tmp_path / 'in.json')!r}, {str(tmp_path / 'bi')!r}, None, progress=False, "
            f"executor='ray', ray_address={cluster.address!r})))")
    r = run_cli(sys.executable, '-c', code)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert (m['succeeded'], m['executor'], sum(m['nodes'].values())) == (2, 'ray', 2)
    assert all((tmp_path / 'bi' / x['instance_id'] / 'iteration_1' / 'check.json').exists() for x in recs)
    # the RL environment's batch: a GRPO group graded on the cluster
    code = ("from swebench_lab.training import SWEBenchEnv; from swebench_lab.executors import make_executor; from swebench_lab.data import load_instances; "
            f"recs = load_instances({str(DEMO_SWE)!r}); env = SWEBenchEnv(recs, 'docker', 300); "
            f"ex = make_executor('ray', 4, {cluster.address!r}); "
            f"print([r for r, _ in env.step_batch([recs[0]['patch'], {NOOP!r}, {MISSING!r}, ''], [x['instance_id'] for x in recs[:4]], ex)])")
    r = run_cli(sys.executable, '-c', code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == '[1.0, 0.0, -1.0, -1.0]'
