"""output.json from pytest's verbose lines: {"tests": [{"name", "status"}]}."""
import json, re, sys
stdout, stderr, out = (open(p, errors="replace").read() if i < 2 else p for i, p in enumerate(sys.argv[1:4]))
tests = {}
for line in (stdout + "\n" + stderr).splitlines():
    m = re.match(r"^(\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", line.strip())
    if m: tests[m[1]] = m[2]
json.dump({"tests": [{"name": n, "status": s} for n, s in tests.items()]}, open(out, "w"), indent=1)
