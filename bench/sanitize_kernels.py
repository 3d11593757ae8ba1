"""One small launch of every kernel, forward and backward, in float32: what
``compute-sanitizer`` (memcheck, racecheck, synccheck) runs in bench/gpu_check.py.
Exits 1 if a kernel disagrees with the xp path."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_stages  # noqa: E402

rows = [gpu_stages.check_family(family, "float32") for family in gpu_stages.SMOKE_CASES]
for row in rows:
    print(row["family"], "ok" if row["ok"] else f"FAILED {row.get('error', row)}")
sys.exit(0 if all(row["ok"] for row in rows) else 1)
