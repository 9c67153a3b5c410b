"""The workbench's model server over real HTTP on loopback: the openai client, LiteLLM, streaming,
OpenAI-shaped errors, a bounded concurrent load, and the refusals (quantization without CUDA)."""
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import run_cli
from swebench_lab.serving import serve_in_background, vllm_command

MSG = [{'role': 'user', 'content': 'Write a patch that fixes slugify.'}]


@pytest.fixture(scope='module')
def server(tiny, tmp_path_factory):
    log = tmp_path_factory.mktemp('srv') / 'server.log'
    with serve_in_background(tiny['base'], f"baseline:{tiny['baseline']},trained:{tiny['trained']}", log_path=log,
                             extra_args=['--served-model-name', 'tiny', '--default-max-tokens', '16']) as h:
        yield h


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key='anything', max_retries=0, timeout=60)


def test_models_and_health(server, client):
    assert httpx.get(server.url + '/health').json()['models'] == ['tiny', 'baseline', 'trained']
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {'tiny', 'baseline', 'trained'}
    assert cards['trained'].model_extra['parent'] == 'tiny' and cards['tiny'].model_extra['max_model_len'] == 8192


def test_openai_client_each_model(client):
    texts = {}
    for m in ('tiny', 'baseline', 'trained'):
        r = client.chat.completions.create(model=m, messages=MSG, max_tokens=12, temperature=0)
        assert r.model == m and r.choices[0].finish_reason in ('stop', 'length')
        assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 12
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        texts[m] = r.choices[0].message.content
    assert len(set(texts.values())) > 1  # the adapters really change the model


def test_sampling_options(client):
    a = client.chat.completions.create(model='trained', messages=MSG, max_tokens=10, temperature=0.9, top_p=0.9, seed=7, n=3)
    b = client.chat.completions.create(model='trained', messages=MSG, max_tokens=10, temperature=0.9, top_p=0.9, seed=7, n=3)
    assert len(a.choices) == 3 and [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    full = client.chat.completions.create(model='tiny', messages=MSG, max_tokens=12, temperature=0).choices[0].message.content
    if len(full) > 3:
        stop = full[2:4]
        cut = client.chat.completions.create(model='tiny', messages=MSG, max_tokens=12, temperature=0, stop=[stop])
        assert stop not in cut.choices[0].message.content and cut.choices[0].finish_reason == 'stop'


def test_streaming_matches_non_streaming(client):
    whole = client.chat.completions.create(model='baseline', messages=MSG, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model='baseline', messages=MSG, max_tokens=12, temperature=0, stream=True,
                                                 stream_options={'include_usage': True}))
    text = ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_litellm(server, client):
    import litellm
    r = litellm.completion(model='openai/trained', api_base=server.base_url, api_key='anything', messages=MSG,
                           max_tokens=10, temperature=0)
    ref = client.chat.completions.create(model='trained', messages=MSG, max_tokens=10, temperature=0)
    assert r.choices[0].message.content == ref.choices[0].message.content
    assert r.usage.completion_tokens == ref.usage.completion_tokens


def test_errors_are_openai_shaped(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model='nope', messages=MSG)
    assert e.value.code == 'model_not_found'
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model='tiny', messages=[{'role': 'user', 'content': 'x ' * 9000}], max_tokens=5)
    assert e.value.code == 'context_length_exceeded' and 'maximum context length is 8192 tokens' in str(e.value)
    for body in ({'model': 'tiny', 'messages': MSG, 'temperature': 3}, {'model': 'tiny', 'messages': []},
                 {'model': 'tiny'}, {'model': 'tiny', 'messages': MSG, 'n': 0}, {'model': 'tiny', 'messages': [{'role': 'robot', 'content': 'x'}]}):
        r = httpx.post(server.base_url + '/chat/completions', json=body)
        assert r.status_code == 400 and r.json()['error']['type'] == 'invalid_request_error', (body, r.text)
    r = httpx.post(server.base_url + '/chat/completions', content=b'{"model": "tiny", ', headers={'content-type': 'application/json'})
    assert r.status_code == 400 and 'error' in r.json()


def test_hostile_bodies_are_refused_fast(server):
    """A 50 MB body is a 413 (announced or chunked), a lone surrogate a 400, unsupported parameters and malformed tools a
    400 that names them, and a prompt far past the context a 400 before it is tokenised; the server answers normally
    afterwards, well-formed tools included (given to the model through its chat template)."""
    url = server.base_url + '/chat/completions'
    t0 = time.perf_counter()
    big = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b'x' * (50 * 2**20) + b'"}]}'
    r = httpx.post(url, content=big, headers={'content-type': 'application/json'}, timeout=60)
    assert r.status_code == 413 and r.json()['error']['code'] == 'request_too_large', r.text
    def chunks():
        for i in range(0, len(big), 2**20): yield big[i:i + 2**20]
    r = httpx.post(url, content=chunks(), headers={'content-type': 'application/json'}, timeout=60)
    assert r.status_code == 413, r.text
    r = httpx.post(url, content=b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
                   headers={'content-type': 'application/json'}, timeout=60)
    assert r.status_code == 400 and 'cannot be encoded' in r.json()['error']['message'], r.text
    for extra, name in (({'logprobs': True, 'top_logprobs': 3}, 'logprobs, top_logprobs'), ({'tools': 'not a list'}, 'tools'),
                        ({'tools': [{'type': 'function'}]}, 'tools.0.function'), ({'tool_choice': 'required'}, 'tool_choice')):
        r = httpx.post(url, json={'model': 'tiny', 'messages': MSG, **extra}, timeout=60)
        assert r.status_code == 400 and name in r.json()['error']['message'], (extra, r.text)
    r = httpx.post(url, json={'model': 'tiny', 'messages': [{'role': 'user', 'content': 'x' * (8 * 2**20)}]}, timeout=60)
    assert r.status_code == 400 and r.json()['error']['code'] == 'context_length_exceeded', r.text
    assert time.perf_counter() - t0 < 60
    tools = [{'type': 'function', 'function': {'name': 'bash', 'parameters': {'type': 'object', 'properties': {}}}}]
    r = httpx.post(url, json={'model': 'tiny', 'messages': MSG, 'max_tokens': 4, 'logprobs': False, 'tools': tools}, timeout=60)
    assert r.status_code == 200 and r.json()['choices'][0]['message']['content'] is not None


def test_bounded_concurrent_load(server):
    "200 requests from 16 clients: every answer is a 200 with usage, no 5xx."
    def one(i):
        with httpx.Client(timeout=120) as c:
            r = c.post(server.base_url + '/chat/completions',
                       json={'model': ['tiny', 'baseline', 'trained'][i % 3], 'messages': [{'role': 'user', 'content': f'request {i}'}],
                             'max_tokens': 4, 'temperature': 0})
            return r.status_code, r.json().get('usage', {}).get('completion_tokens')
    t = time.perf_counter()
    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(one, range(200)))
    codes = [c for c, _ in results]
    assert codes.count(200) == 200, {c: codes.count(c) for c in set(codes)}
    assert all(u and u > 0 for _, u in results)
    assert time.perf_counter() - t < 300


def test_concurrent_requests_are_decoded_together(server):
    """Requests sent at once share decoding steps (the scheduler's batch grows past one row), and each answer is the one
    it gets alone: greedy text on the base model and both adapters, a seeded sampled answer, a stop string, a stream."""
    url = server.base_url + '/chat/completions'
    def body(i):
        b = {'model': ['tiny', 'baseline', 'trained'][i % 3], 'messages': [{'role': 'user', 'content': f'request number {i} ' * (1 + i % 4)}],
             'max_tokens': 12, 'temperature': 0}
        if i % 4 == 1: b.update(temperature=0.9, top_p=0.95, seed=1000 + i)
        return b
    def ask(b):
        with httpx.Client(timeout=120) as c:
            r = c.post(url, json=b); r.raise_for_status(); return r.json()
    bodies = [body(i) for i in range(16)]
    alone = [ask(b) for b in bodies]
    h0 = httpx.get(server.url + '/health').json()
    with ThreadPoolExecutor(16) as ex: together = list(ex.map(ask, bodies))
    h1 = httpx.get(server.url + '/health').json()
    for a, t in zip(alone, together):
        assert [c['message']['content'] for c in a['choices']] == [c['message']['content'] for c in t['choices']]
        assert a['usage'] == t['usage']
    steps, rows = h1['decode_steps'] - h0['decode_steps'], h1['mean_batch_rows'] * h1['decode_steps'] - h0['mean_batch_rows'] * h0['decode_steps']
    assert h1['scheduler'] == 'batch' and rows / steps > 2, (h0, h1)     # 16 requests of 12 tokens, alone: 1 row a step
    # a stop string and a stream, each beside 7 other requests
    full = alone[0]['choices'][0]['message']['content']
    with ThreadPoolExecutor(8) as ex:
        others = [ex.submit(ask, b) for b in bodies[1:8]]
        if len(full) > 3:
            cut = ask({**bodies[0], 'stop': [full[2:4]]})['choices'][0]
            assert cut['message']['content'] == full[:full.index(full[2:4])] and cut['finish_reason'] == 'stop'
        with httpx.stream('POST', url, json={**bodies[0], 'stream': True}, timeout=120) as r:
            events = [json.loads(l[6:]) for l in r.iter_lines() if l.startswith('data: {')]
        assert ''.join(e['choices'][0]['delta'].get('content') or '' for e in events if e['choices']) == full
        assert all(o.result()['choices'] for o in others)


def test_serial_scheduler(tiny, tmp_path):
    "`--scheduler serial` answers with generate() one request at a time, as before, and says so in /health."
    with serve_in_background(tiny['base'], f"trained:{tiny['trained']}", log_path=tmp_path / 'log',
                             extra_args=['--served-model-name', 'tiny', '--scheduler', 'serial']) as h:
        assert httpx.get(h.url + '/health').json()['scheduler'] == 'serial'
        r = httpx.post(h.base_url + '/chat/completions', timeout=60,
                       json={'model': 'trained', 'messages': MSG, 'max_tokens': 6, 'temperature': 0}).json()
        assert 0 < r['usage']['completion_tokens'] <= 6


def test_api_key_required_when_set(tiny, tmp_path):
    with serve_in_background(tiny['base'], extra_args=['--api-key', 'sekrit-key-123', '--served-model-name', 'tiny'],
                             log_path=tmp_path / 'log') as h:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=h.base_url, api_key='wrong', max_retries=0).models.list()
        assert openai.OpenAI(base_url=h.base_url, api_key='sekrit-key-123').models.list().data[0].id == 'tiny'


def test_quantization_refused_without_cuda(tiny):
    import torch
    if torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    r = run_cli(sys.executable, '-m', 'swebench_lab.serving', '--base-model', str(tiny['base']), '--load-in-4bit')
    assert r.returncode == 2 and r.stderr.startswith('error: --load-in-4bit needs an NVIDIA GPU with CUDA')


def test_vllm_mode_command(tiny):
    r = run_cli(sys.executable, '-m', 'swebench_lab.serving', '--serving-mode', 'vllm', '--base-model', str(tiny['base']),
                '--lora-modules', f"baseline:{tiny['baseline']},trained:{tiny['trained']}", '--gpu-memory', '0.7', '--dry-run')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == vllm_command(str(tiny['base']), {'baseline': str(tiny['baseline']), 'trained': str(tiny['trained'])},
                                            gpu_memory=0.7)
    assert f"--enable-lora --lora-modules baseline={tiny['baseline'].resolve()} trained={tiny['trained'].resolve()}" in r.stdout
