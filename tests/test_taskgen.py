"""Task generation end to end in Docker: bugs injected into the demo repository and its pull requests mined, proved in
containers, written as rows that `validate` passes, evaluated, and solved by an agent driven by the scripted policy."""
import json
import shutil

import pytest

from conftest import ROOT, run_cli, tagged_containers
from swebench_lab.data import load_instances


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    "A fresh demo repository (bug commits are written into the store) and the demo's recipe, in the test's own data folder."
    from swebench_lab.demo_bench import build_demo
    root = tmp_path / 'crawled_data'
    shutil.copytree(ROOT / 'crawled_data' / 'envs', root / 'envs')
    paths = build_demo(root, run_tests=False)
    monkeypatch.setenv('SWEBENCH_LAB_CRAWLED_DATA', str(root))
    monkeypatch.setenv('SWEBENCH_LAB_RESULTS', str(tmp_path / 'results'))
    return paths


@pytest.mark.docker
def test_injected_and_mined_rows_validate_and_an_agent_solves_one(scratch, tmp_path):
    from swebench_lab.taskgen import generate
    from swebench_lab.run_evaluation import validate, run_evaluation
    s = generate('demo/textkit', 'inject', commit='HEAD', strategies=['flip_comparison', 'remove_statement', 'swap_boolean'],
                 per_strategy=2, benchmarks=[scratch['swebench']], backend='docker', progress=False)
    assert s['valid'] >= 2 and set(s['by_strategy']) == {'flip_comparison', 'remove_statement', 'swap_boolean'}, s
    rows = load_instances(s['dataset'])
    assert all(r['provenance']['source'] == 'inject' and r['FAIL_TO_PASS'] for r in rows)
    # every row written passes validate in Docker: the revert resolves, the bug fails
    v = validate(s['dataset'], backend='docker', progress=False)
    assert (v['valid'], v['total'], v['agree_with_swebench']) == (len(rows), len(rows), len(rows)), v['instances']
    # rows mined from the history, with no benchmark to guard against (the demo's four pull requests), also validate
    m = generate('demo/textkit', 'mine', rev_range='HEAD', backend='docker', progress=False)
    assert (m['candidates'], m['valid']) == (4, 4), m
    vm = validate(m['dataset'], backend='docker', progress=False)
    assert vm['valid'] == 4, vm['instances']
    # the generated rows are a dataset like any other: gold and empty predictions grade as they should
    g = run_evaluation(s['dataset'], predictions_path='gold', backend='docker', progress=False)
    e = run_evaluation(s['dataset'], predictions_path='empty', backend='docker', progress=False)
    assert (g['resolved_instances'], e['resolved_instances']) == (len(rows), 0)
    assert tagged_containers() == [], 'containers left behind'


@pytest.mark.docker
def test_an_agent_with_the_scripted_policy_solves_a_generated_row(scratch, tmp_path):
    "The scripted policy replays the revert through the agent's bash tool; the harness gives reward 1."
    from swebench_lab.taskgen import generate
    from swebench_lab.agenthub import load_scaffold, runagent_multiple
    from swebench_lab.scripted_policy import scripted_policy_for
    s = generate('demo/textkit', 'inject', commit='HEAD', strategies=['flip_comparison'], per_strategy=2,
                 benchmarks=[scratch['swebench']], backend='docker', progress=False)
    recs = load_instances(s['dataset'])[:1]
    assert recs, s
    cfg = load_scaffold('mini_swe_agent', False)
    with scripted_policy_for(recs, cfg) as p:
        r = runagent_multiple(s['dataset'], tmp_path / 'agent', 'x', 'openai/scripted-policy', 'mini_swe_agent', False, k=1,
                              instance_ids=[recs[0]['instance_id']], base_url=p.base_url, progress=False)
    assert (r['reward_1'], r['exit_reasons']) == (1, {'submitted': 1}), r
    assert tagged_containers() == [], 'containers left behind'


@pytest.mark.quick
def test_candidates_and_their_diffs(scratch):
    "Mining and injection need no sandbox: candidates, counts, and bugs whose revert gives the clean tree back."
    from swebench_lab.repos import RepoStore
    from swebench_lab.taskgen import STRATEGIES, head_of, inject_candidates, mine_candidates
    repo = RepoStore().get('demo/textkit')
    mined, counts = mine_candidates(repo, 'HEAD')
    assert (len(mined), counts['skipped: root commit']) == (4, 1)
    bugs, counts = inject_candidates(repo, 'HEAD', per_strategy=2, seed=1)
    assert {b['provenance']['strategy'] for b in bugs} == set(STRATEGIES)
    clean = repo.tree_of(head_of(repo))
    for b in bugs:
        assert repo.apply_diffs(clean, [b['bug_patch']]) == b['bug_tree'] and repo.apply_diffs(b['bug_tree'], [b['patch']]) == clean
    assert len({b['bug_patch'] for b in bugs}) == len(bugs)


def test_cli_errors_are_one_line(scratch):
    "Bad inputs end with one clear line and exit status 2."
    r = run_cli(str(ROOT / '.venv' / 'bin' / 'python'), '-m', 'swebench_lab.taskgen', 'inject', '--repo', 'demo/textkit',
                '--commit', 'HEAD', '--strategies', 'typo', '--backend', 'local')
    assert r.returncode == 2 and 'unknown strategy' in r.stderr, r.stderr
    r = run_cli(str(ROOT / '.venv' / 'bin' / 'python'), '-m', 'swebench_lab.taskgen', 'mine', '--repo', 'demo/textkit', '--backend', 'local')
    assert r.returncode == 2 and 'revision range' in r.stderr, r.stderr
    r = run_cli(str(ROOT / '.venv' / 'bin' / 'python'), '-m', 'swebench_lab.taskgen', 'mine', '--repo', 'nobody/nothing',
                '--rev-range', 'HEAD', '--backend', 'local')
    assert r.returncode == 2 and 'unknown repo' in r.stderr, r.stderr


BUGGY_TO_ROMAN = '''Here is the function with a subtle bug:

```python
def to_roman(number):
    """Write 1..3999 in Roman numerals."""
    if not 0 < number < 4000:
        raise ValueError("roman numerals cover 1..3999")
    out = []
    for value, numeral in _VALUES[:-1]:
        count, number = divmod(number, value)
        out.append(numeral * count)
    return "".join(out)
```'''

ISSUE = 'to_roman drops the last units: to_roman(3) returns an empty string instead of "III".'


def test_a_model_writes_bugs_and_issue_texts(scratch, tmp_path, monkeypatch):
    """`rewrite` with a model from the registry (the scripted policy behind a loopback server: it rewrites to_roman with a
    bug, and answers garbage for every other function), and problem statements written by a model."""
    from swebench_lab.scripted_policy import ScriptedPolicy
    from swebench_lab.taskgen import generate
    from swebench_lab.run_evaluation import validate
    with ScriptedPolicy({'def to_roman(': [BUGGY_TO_ROMAN], 'Write a concise GitHub issue': [ISSUE]}, default=['no code here']) as p:
        (tmp_path / 'models.yaml').write_text(f'bug-writer: {{base_url: "{p.base_url}", api_key_env: LOOPBACK_KEY, context_limit: 100000, '
                                              'price_in: 1.0e-06, price_out: 2.0e-06}\n')
        monkeypatch.setenv('SWEBENCH_LAB_MODELS', str(tmp_path / 'models.yaml'))
        monkeypatch.setenv('LOOPBACK_KEY', 'sk-loopback')
        s = generate('demo/textkit', 'inject', commit='HEAD', strategies=['rewrite'], model='bug-writer', issue_model='bug-writer',
                     rewrites=1, benchmarks=[scratch['swebench']], backend='local', progress=False)
    assert s['valid'] == 1 and s['counts']['rewrite: candidates'] == 1, s
    assert s['counts']['rewrite: model calls'] == s['counts']['rewrite: unusable replies'] + 1
    row = load_instances(s['dataset'])[0]
    assert row['problem_statement'] == ISSUE and row['provenance']['strategy'] == 'rewrite'
    assert row['provenance']['template_statement'].startswith(f"{len(row['FAIL_TO_PASS'])} test")
    assert '-    for value, numeral in _VALUES[:-1]:' in row['patch']       # the gold patch reverts the model's bug
    assert row['FAIL_TO_PASS'] and all(t.startswith('tests/test_roman.py::') for t in row['FAIL_TO_PASS'])
    assert validate(s['dataset'], backend='local', progress=False)['valid'] == 1
