"""Smoke test: the attention benchmark script runs end to end in --quick mode (no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention.py"


def test_bench_attention_quick_runs():
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for tag in ("[gather+scaled_dot]", "[flash batched]", "[flash attend_all memory]", "| scaled_dot |"):
        assert tag in out, out
    assert "ratio" in out
