"""A process killed while appending leaves a JSONL file that the reader, the resume helper and the
next writer accept, with every complete record kept. Real processes, real SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swebench_lab.core import JSONLWriter, JSONLError, iter_jsonl, read_jsonl, resume_keys

WRITER = r'''
import sys, threading
from swebench_lab.core import JSONLWriter
path, size, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
w = JSONLWriter(path)
def loop(t):
    i = 0
    while True:
        w.write({"instance_id": f"t{t}-{i}", "payload": "x" * size, "tail": "end"})
        if t == 0 and i == 2: print("ready", flush=True)
        i += 1
ts = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
'''


def _spawn(code, *args):
    return subprocess.Popen([sys.executable, '-c', code, *map(str, args)], stdout=subprocess.PIPE, text=True)


def _check_consistent(path: Path):
    "Every complete line parses, nothing is duplicated, and a torn tail (if any) is the only damage."
    raw = path.read_bytes()
    lines = raw.split(b'\n')
    complete, tail = lines[:-1], lines[-1]  # tail is b'' when the file ends with a newline
    recs = [json.loads(l) for l in complete if l.strip()]
    assert all(r['tail'] == 'end' for r in recs)
    ids = [r['instance_id'] for r in recs]
    assert len(ids) == len(set(ids))
    return ids, tail


@pytest.mark.parametrize('size,threads,delay', [(200, 4, 0.3), (4_000_000, 2, 0.5), (40_000_000, 1, 0.7)])
def test_killed_writer_leaves_readable_file(tmp_path, size, threads, delay):
    path = tmp_path / 'preds.jsonl'
    p = _spawn(WRITER, path, size, threads)
    assert p.stdout.readline().strip() == 'ready'
    time.sleep(delay)
    p.send_signal(signal.SIGKILL); p.wait()
    ids, tail = _check_consistent(path)
    assert len(ids) >= 3
    # reader and resume helper accept the file and keep every complete record
    assert [r['instance_id'] for r in read_jsonl(path)] == ids
    assert resume_keys(path) == set(ids)
    # the next writer repairs a torn tail and appends on a line of its own
    with JSONLWriter(path) as w: w.write({'instance_id': 'after-crash', 'tail': 'end'})
    ids2, tail2 = _check_consistent(path)
    assert tail2 == b'' and ids2 == ids + ['after-crash']


def test_kill_mid_record_is_tolerated(tmp_path):
    "A process killed after writing part of a record: the torn line is skipped, the rest kept."
    path = tmp_path / 'torn.jsonl'
    with JSONLWriter(path) as w:
        for i in range(5): w.write({'instance_id': f'i{i}', 'tail': 'end'})
    code = r'''
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
os.write(fd, b'{"instance_id": "i5", "payload": "' + b'y' * 100000); os.fsync(fd)
print("ready", flush=True)
time.sleep(60)
'''
    p = _spawn(code, path)
    assert p.stdout.readline().strip() == 'ready'
    p.send_signal(signal.SIGKILL); p.wait()
    assert not path.read_bytes().endswith(b'\n')
    assert [r['instance_id'] for r in iter_jsonl(path)] == [f'i{i}' for i in range(5)]
    assert resume_keys(path) == {f'i{i}' for i in range(5)}
    with JSONLWriter(path) as w: w.write({'instance_id': 'i5', 'tail': 'end'})
    assert [r['instance_id'] for r in read_jsonl(path)] == [f'i{i}' for i in range(6)]


def test_processes_appending_together(tmp_path):
    "Two processes × four threads appending to one file: every line whole, none lost."
    path = tmp_path / 'shared.jsonl'
    code = r'''
import sys
from concurrent.futures import ThreadPoolExecutor
from swebench_lab.core import JSONLWriter
with JSONLWriter(sys.argv[1]) as w, ThreadPoolExecutor(4) as ex:
    list(ex.map(lambda i: w.write({"instance_id": f"{sys.argv[2]}-{i}", "pad": "z" * (i * 97 % 70000)}), range(300)))
'''
    ps = [subprocess.Popen([sys.executable, '-c', code, str(path), tag]) for tag in ('a', 'b')]
    assert [p.wait(timeout=120) for p in ps] == [0, 0]
    assert resume_keys(path) == {f'{t}-{i}' for t in 'ab' for i in range(300)}


@pytest.mark.quick
def test_bad_input_names_file_line_and_problem(tmp_path):
    path = tmp_path / 'bad.jsonl'
    path.write_text('{"instance_id": "a"}\n\n{"instance_id": "b"\n{"instance_id": "c"}\n')
    with pytest.raises(JSONLError) as e: read_jsonl(path)
    assert str(e.value).startswith(f'{path}:3: invalid JSON')
    assert e.value.line == 3
