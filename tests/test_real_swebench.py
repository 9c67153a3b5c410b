"""The harness on real SWE-bench rows and their real repositories (psf/requests, pylint-dev/pylint, pallets/flask).

`tests/data/swebench-real-rows.jsonl` holds every Verified and Lite row of those three repositories (32 instances);
`tests/data/real-validation/` holds the logs of a full `validate` run on them (gold and unpatched, 64 logs, with the
runner's own records) and its verdicts. Grading those logs must agree with swebench's own `get_eval_report`, and give
the same verdicts, on any machine. With the repositories' git bundles at hand (../shared/data/repos, or
SWEBENCH_LAB_SHARED_DATA), `validate` runs for real on one instance per repository: images built here, official eval
scripts run as published. `tests/data/real-validation-more/` does the same for one valid Verified row of each further
repository validated here (its gold and unpatched logs stored), validated for real where its repository is present
($SWEBENCH_LAB_REAL_REPOS, or the shared data: pytest's bundle is there)."""
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from swebench_lab.data import load_instances
from swebench_lab.grading import swebench_agreement, grade_log, NO_TEST_OUTPUT

DATA = Path(__file__).parent / 'data'
ROWS = DATA / 'swebench-real-rows.jsonl'
VALIDATION = DATA / 'real-validation'
REPOS = ('psf__requests', 'pylint-dev__pylint', 'pallets__flask')


def shared_repos() -> Path | None:
    for c in (os.environ.get('SWEBENCH_LAB_SHARED_DATA'), ROOT.parent / 'shared' / 'data', Path('/work/shared/data')):
        if c and all((Path(c) / 'repos' / f'{r}.bundle').exists() for r in REPOS): return Path(c) / 'repos'
    return None


def _unpacked(tmp_path_factory, folder: Path) -> Path:
    d = tmp_path_factory.mktemp(folder.name)
    with tarfile.open(folder / 'logs.tar.xz') as tf: tf.extractall(d, filter='data')
    return d


@pytest.fixture(scope='module')
def logs(tmp_path_factory): return _unpacked(tmp_path_factory, VALIDATION)


@pytest.mark.quick
def test_grading_agrees_with_swebench_on_every_real_log(logs):
    "64 real logs (gold and unpatched, 32 instances): our verdict and swebench's get_eval_report agree on each."
    recs = {r['instance_id']: r for r in load_instances(ROWS)}
    checked = []
    for arm in ('gold', 'unpatched'):
        for iid, rec in recs.items():
            log = logs / arm / iid / 'test_output.log'
            runner = logs / arm / iid / 'runner_report.jsonl'
            a = swebench_agreement(rec, log, runner.read_text() if runner.exists() else None)
            assert a['agree'], (arm, a)
            checked.append(a)
    assert len(checked) == 64
    assert sum(a['swebench_found_output'] for a in checked) == 64      # every log reached its tests


@pytest.mark.quick
def test_real_logs_give_the_recorded_verdicts(logs):
    "Regrading the saved logs reproduces the validation's verdicts (valid, gold_fails, empty_passes, no_test_output)."
    recs = {r['instance_id']: r for r in load_instances(ROWS)}
    expected = {r['instance_id']: r['verdict'] for r in json.loads((VALIDATION / 'validation.json').read_text())['instances']}
    for iid, rec in recs.items():
        g, u = (grade_log(rec, (logs / arm / iid / 'test_output.log').read_text(),
                          (logs / arm / iid / 'runner_report.jsonl').read_text() if (logs / arm / iid / 'runner_report.jsonl').exists() else None)[iid]
                for arm in ('gold', 'unpatched'))
        verdict = (NO_TEST_OUTPUT if NO_TEST_OUTPUT in (g['status'], u['status']) else 'gold_fails' if not g['resolved']
                   else 'empty_passes' if u['resolved'] else 'valid')
        assert verdict == expected[iid], (iid, g['status'], u['status'])
        assert all(r['status'] == NO_TEST_OUTPUT or r.get('cross_check') in ('agree', 'unavailable') for r in (g, u)), (iid, g, u)


@pytest.mark.docker
def test_validate_one_real_instance_per_repository(tmp_path):
    "validate builds the images here from the shipped recipes and proves one instance of each repository valid."
    repos = shared_repos()
    if repos is None: pytest.skip('the git bundles of requests, pylint and flask are not here (../shared/data/repos)')
    crawled = tmp_path / 'crawled'
    (crawled / 'repos').mkdir(parents=True)
    for r in REPOS: (crawled / 'repos' / f'{r}.bundle').symlink_to(repos / f'{r}.bundle')
    ids = ['psf__requests-3362', 'pylint-dev__pylint-4604', 'pallets__flask-5014']
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'validate', '--dataset_name', str(ROWS),
                '--instance_ids', *ids, '--max_workers', '2',
                env={'SWEBENCH_LAB_CRAWLED_DATA': str(crawled), 'SWEBENCH_LAB_RESULTS': str(tmp_path / 'results')}, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / 'results' / 'evaluations' / 'validate' / 'swebench-real-rows' / 'validation.json').read_text())
    assert (s['valid'], s['agree_with_swebench']) == (3, 3), s


@pytest.mark.docker
def test_validate_pytest_rows_of_verified(tmp_path):
    """A fourth repository, pytest itself: the runner is the code under test, and its version comes from its release
    tags (without them it calls itself 0.1.dev and fails its own minversion). Two SWE-bench Verified rows, 5.4 and 7.2."""
    repos = shared_repos()
    verified = repos.parent / 'swebench' / 'SWE-bench_Verified-test.parquet' if repos else None
    if repos is None or not (repos / 'pytest-dev__pytest.bundle').exists() or not verified.exists():
        pytest.skip("pytest's git bundle or SWE-bench Verified is not here (../shared/data)")
    crawled = tmp_path / 'crawled'
    (crawled / 'repos').mkdir(parents=True)
    (crawled / 'repos' / 'pytest-dev__pytest.bundle').symlink_to(repos / 'pytest-dev__pytest.bundle')
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'validate', '--dataset_name', str(verified),
                '--instance_ids', 'pytest-dev__pytest-7432', 'pytest-dev__pytest-10081', '--max_workers', '2',
                env={'SWEBENCH_LAB_CRAWLED_DATA': str(crawled), 'SWEBENCH_LAB_RESULTS': str(tmp_path / 'results')}, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / 'results' / 'evaluations' / 'validate' / 'SWE-bench_Verified-test' / 'validation.json').read_text())
    assert (s['valid'], s['agree_with_swebench']) == (2, 2), s


# --- Every repository of Verified that could be brought here: one validated row each, with its logs ---------------------
MORE = DATA / 'real-validation-more'
MORE_REPOS = {'astropy/astropy', 'mwaskom/seaborn', 'pydata/xarray', 'pytest-dev/pytest', 'sphinx-doc/sphinx', 'sympy/sympy'}


def _repo_dirs() -> list[Path]:
    "Where real repositories may be: $SWEBENCH_LAB_REAL_REPOS, the shared data, this checkout's crawled_data/repos."
    out = [Path(os.environ['SWEBENCH_LAB_REAL_REPOS'])] if os.environ.get('SWEBENCH_LAB_REAL_REPOS') else []
    if (shared := shared_repos()) is not None: out.append(shared)
    return out + [ROOT / 'crawled_data' / 'repos']


def _find_repo(key: str) -> Path | None:
    for d in _repo_dirs():
        for c in (d / f'{key}.bundle', d / f'{key}.git', d / key):
            if c.exists(): return c
    return None


@pytest.fixture(scope='module')
def more_logs(tmp_path_factory): return _unpacked(tmp_path_factory, MORE)


@pytest.mark.quick
def test_more_repositories_agree_with_swebench_and_keep_their_verdicts(more_logs):
    """One valid row per further repository (pytest, sphinx, sympy, xarray, astropy, seaborn): swebench's grader agrees
    with ours on its gold and unpatched logs, and regrading gives the recorded verdict."""
    recs = {r['instance_id']: r for r in load_instances(MORE / 'rows.jsonl')}
    table = {r['instance_id']: r for r in json.loads((MORE / 'validation.json').read_text())['instances']}
    assert {r['repo'] for r in recs.values()} == MORE_REPOS and set(recs) == set(table)
    for iid, rec in recs.items():
        reports = {}
        for arm in ('gold', 'unpatched'):
            log, runner = more_logs / arm / iid / 'test_output.log', more_logs / arm / iid / 'runner_report.jsonl'
            a = swebench_agreement(rec, log, runner.read_text() if runner.exists() else None)
            assert a['agree'] and a['swebench_found_output'], (iid, arm, a)
            reports[arm] = grade_log(rec, log.read_text(), runner.read_text() if runner.exists() else None)[iid]
        assert (reports['gold']['resolved'], reports['unpatched']['resolved']) == (True, False), iid
        assert table[iid]['verdict'] == 'valid', table[iid]


@pytest.mark.docker
def test_validate_more_repositories_where_present(tmp_path):
    """Those rows validated for real when their repositories are here ($SWEBENCH_LAB_REAL_REPOS or the shared data):
    images built from the shipped recipes with the upload cutoff, submodules from the store (astropy)."""
    recs = load_instances(MORE / 'rows.jsonl')
    keys = {r['repo']: r['repo'].replace('/', '__') for r in recs}
    extra = {'astropy/astropy': ['astropy__astropy-helpers']}
    found = {repo: _find_repo(k) for repo, k in keys.items()}
    have = [r['instance_id'] for r in recs if found[r['repo']] and all(_find_repo(x) for x in extra.get(r['repo'], []))]
    if not have: pytest.skip('none of the repositories of tests/data/real-validation-more is here')
    crawled = tmp_path / 'crawled'
    (crawled / 'repos').mkdir(parents=True)
    for repo, path in found.items():
        if path: (crawled / 'repos' / path.name).symlink_to(path)
    for x in sum(extra.values(), []):
        if (p := _find_repo(x)): (crawled / 'repos' / p.name).symlink_to(p)
    r = run_cli(sys.executable, '-m', 'swebench_lab.run_evaluation', 'validate', '--dataset_name', str(MORE / 'rows.jsonl'),
                '--instance_ids', *have, '--max_workers', '2',
                env={'SWEBENCH_LAB_CRAWLED_DATA': str(crawled), 'SWEBENCH_LAB_RESULTS': str(tmp_path / 'results')}, timeout=3600)
    s = json.loads((tmp_path / 'results' / 'evaluations' / 'validate' / 'rows' / 'validation.json').read_text())
    assert r.returncode == 0 and (s['valid'], s['agree_with_swebench']) == (len(have), len(have)), (r.stdout[-3000:], s)
