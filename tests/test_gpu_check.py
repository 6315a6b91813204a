"""benchmarks/gpu_check.py on CPU in its small size: the code path a GPU run takes, end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_small_on_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--small",
                             "--threads", "1"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["forbidden_imports"] == []  # no ray, mlflow, optuna: what a bare GPU machine has
    assert report["torch_floor"] and report["meets_floor"] is True  # the torch pyproject declares
    slw = report["slw_compile"]
    assert slw["lengths"] >= 8 and slw["graphs"] == 1 and slw["compile_s"] > 0 and slw["full_vs_static_bare"] > 0
    for mode in ("compiled", "eager"):
        assert set(slw[mode]["tokens_per_s"]) == {"e/8", "e/4", "e/2", "full"}
        assert all(v > 0 for v in slw[mode]["tokens_per_s"].values())
    for mode in ("eager", "compiled"):
        assert report[mode]["loop_tokens_per_s"] > 0 and report[mode]["bare_tokens_per_s"] > 0
    assert report["compiled"]["graphs"] == {"loop": 1, "bare": 1}  # SLW off: one static graph each
    assert set(report["step_time_vs_full"]) == {"e/8", "e/4", "e/2"}
    assert "mfu_loop" not in report["compiled"]  # no peak FLOP/s for a CPU
