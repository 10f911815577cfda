"""Smoke test: the attention benchmark script runs end to end in --quick mode (no timing asserts).

Every mechanism must run: a mechanism that raises makes the script exit non-zero (naming it), and
its table row must hold figures (forward / backward rows/s), not a failure mark.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ruvector_hnsw.attention import MECHANISMS

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention.py"


def test_bench_attention_quick_runs_every_mechanism():
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=1200, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for tag in ("[gather+scaled_dot]", "[flash batched]", "[flash attend_all memory]"):
        assert tag in out, out
    assert "ratio" in out
    for name in MECHANISMS:
        row = re.search(rf"^\| {name} \| (.*) \|$", out, flags=re.M)
        assert row is not None, f"{name} missing from the table:\n{out}"
        assert re.fullmatch(r"[\d,]+ / [\d,]+", row.group(1)), f"{name}: {row.group(1)}"
