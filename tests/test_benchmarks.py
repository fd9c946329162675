"""The benchmark script runs end to end and writes every figure it promises (its timings are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pipeline_benchmark_quick_run(tmp_path: Path):
    out = tmp_path / "pipeline.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/pipeline.py", "--quick", "--sizes", "32", "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    for mode in ("files", "cached"):
        row = report["sizes"]["32"][mode]
        assert {"A_single_core", "limit", "pydataset", "layers", "naive", "threads", "workers", "P1_workers_over_limit", "P3_workers_over_pydataset"} <= set(row)
        assert all(value > 0 for key, value in row.items() if key != "rounds")
        assert all(len(values) == report["repeats"] for values in row["rounds"].values())
    assert report["scaling_32px_cached"]["speedup"] > 0 and report["fit_32px"]["P2_fit_over_cpu_limit"] > 0
    assert report["rss_224px_files"]["x10"]["images"] == 10 * report["rss_224px_files"]["x1"]["images"]
