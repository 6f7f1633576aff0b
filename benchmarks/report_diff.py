"""Compare two report.json files field by field, ignoring given top-level sections (default: sim).

    python benchmarks/report_diff.py OLD/report.json NEW/report.json [SECTION ...]
"""
import json
import math
import sys

def walk(a, b, path, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'new' if k in b else 'old'}")
            else:
                walk(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", out)
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        out.append(f"{path}: {a!r} vs {b!r}")

old, new = (json.load(open(p)) for p in sys.argv[1:3])
ignore = set(sys.argv[3:]) or {"sim"}
out = []
for k in sorted(set(old) | set(new)):
    if k in ignore: continue
    walk(old.get(k), new.get(k), k, out)
print("\n".join(out) if out else "identical (ignoring %s)" % ", ".join(sorted(ignore)))
sys.exit(1 if out else 0)
