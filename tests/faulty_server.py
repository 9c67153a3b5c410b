"""FaultyOpenAIServer: a loopback OpenAI-compatible endpoint that misbehaves on purpose.

It stands in only for faults a real server cannot be made to produce on demand: rate limits with
Retry-After, 5xx, stalls past the client's timeout, "context length exceeded" answers and malformed
bodies. The fault an instance gets is named in its prompt (`[[fault:NAME]]`); the server counts the
requests each instance makes."""
import asyncio
import re
import threading
import time
from collections import Counter

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from swebench_lab.serving import free_port

PATCH = 'diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n'


def _ok(model, text=f'Here it is:\n<patch>\n{PATCH}</patch>'):
    return {'id': 'chatcmpl-1', 'object': 'chat.completion', 'created': 0, 'model': model,
            'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': text}, 'finish_reason': 'stop'}],
            'usage': {'prompt_tokens': 100, 'completion_tokens': 20, 'total_tokens': 120}}


def _err(status, message, code=None, headers=None):
    return JSONResponse({'error': {'message': message, 'type': 'invalid_request_error' if status < 500 else 'server_error',
                                   'param': None, 'code': code}}, status_code=status, headers=headers or {})


class FaultyOpenAIServer:
    def __init__(self, stall_s: float = 3.0):
        self.calls = Counter()
        self.times: dict[str, list[float]] = {}
        self.stall_s = stall_s
        app = FastAPI()

        @app.get('/v1/models')
        async def models():
            return {'object': 'list', 'data': [{'id': 'flaky', 'object': 'model', 'max_model_len': 100000}]}

        @app.post('/v1/chat/completions')
        async def chat(request: Request):
            body = await request.json()
            prompt = '\n'.join(m['content'] for m in body['messages'])
            fault = (re.search(r'\[\[fault:(\w+)\]\]', prompt) or [None, 'none'])[1]
            iid = (re.search(r'\[\[id:([\w-]+)\]\]', prompt) or [None, '?'])[1]
            self.calls[iid] += 1
            self.times.setdefault(iid, []).append(time.monotonic())
            k = self.calls[iid]
            if fault == 'ratelimit' and k == 1:
                return _err(429, 'Rate limit reached, slow down', 'rate_limit_exceeded', {'retry-after': '1'})
            if fault == 'server' and k <= 2:
                return _err(500 if k == 1 else 503, 'The server had an error while processing your request')
            if fault == 'stall' and k == 1:
                await asyncio.sleep(self.stall_s)
            if fault == 'context' and prompt.count('[start of ') > 2:
                return _err(400, "This model's maximum context length is 100 tokens. However, your messages resulted in 500 tokens.",
                            'context_length_exceeded')
            if fault == 'malformed' and k == 1:
                return Response(b'{"id": "chatcmpl-1", "choices": [', media_type='application/json')
            if fault == 'emptybody' and k == 1:
                return JSONResponse({'id': 'x', 'object': 'chat.completion'})
            if fault == 'always500':
                return _err(500, 'The server is on fire')
            if fault == 'badrequest':
                return _err(400, "Invalid value for 'temperature'", 'invalid_value')
            return _ok(body['model'])

        self.port = free_port()
        self.base_url = f'http://127.0.0.1:{self.port}/v1'
        self._server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=self.port, log_level='warning'))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self):
        self._thread.start()
        t0 = time.time()
        while not self._server.started:
            if time.time() - t0 > 20: raise RuntimeError('faulty server did not start')
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self._server.should_exit = True
        self._thread.join(10)
