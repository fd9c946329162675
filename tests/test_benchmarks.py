"""The benchmark script runs end to end and writes every figure it promises (its timings are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_quick(script: str, out: Path, *args: str) -> dict:
    """`benchmarks/<script> --quick ... --output out` in a fresh process; its report."""
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick", *args, "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_pipeline_benchmark_quick_run(tmp_path: Path):
    out = tmp_path / "pipeline.json"
    report = run_quick("pipeline.py", out, "--sizes", "32")
    for mode in ("files", "cached"):
        row = report["sizes"]["32"][mode]
        assert {
            "A_single_core",
            "limit",
            "pydataset",
            "layers",
            "naive",
            "threads",
            "workers",
            "P1_workers_over_limit",
            "P3_workers_over_pydataset",
            "auto_over_best",
        } <= set(row)
        figures = {key: value for key, value in row.items() if key not in ("rounds", "auto", "auto_reason", "workers_training_process_cores")}
        assert all(value > 0 for value in figures.values()), figures
        assert row["workers_training_process_cores"] >= 0  # the training process may barely wake while workers fill batches
        assert row["auto"] in ("threads", "workers") and row["auto_reason"]
        assert all(len(values) == report["repeats"] for values in row["rounds"].values())
    assert report["scaling_32px_cached"]["speedup"] > 0 and report["fit_32px"]["P2_fit_over_cpu_limit"] > 0
    rss = report["rss_224px_files"]
    assert rss["x10"]["images"] == rss["x10_cached"]["images"] == 10 * rss["x1"]["images"]
    startup = report["worker_startup"]
    assert startup["library_transform_s"] > 0 and startup["transform_from_the_script_s"] > 0
    assert 0 < startup["library_transform_worker_rss_mib"] < startup["transform_from_the_script_worker_rss_mib"]  # TensorFlow is not imported
    assert rss["x10_cached"]["cache_kib"] > 0 and rss["P4_cached_pss_over_cache_plus_files"] > 0 and rss["P4_cached_copy_pss_over_cache_plus_files"] > 0


@pytest.mark.slow
def test_tuning_benchmark_quick_run(tmp_path: Path):
    out = tmp_path / "tuning.json"
    report = run_quick("tuning.py", out)
    overhead, memory = report["overhead"], report["memory_and_invalid"]
    assert overhead["T1_search_over_plain"] > 0 and overhead["keras_tuner_over_plain"] > 0
    assert all(len(r["search_s"]) == len(r["plain_fit_s"]) > 0 for r in overhead["rounds"])
    assert memory["fits"] == memory["trials"] and memory["T3_fits_of_invalid_networks"] == 0
    assert memory["T2_rss_last_over_5"] > 0
    scaling, oracle = report["scaling"], report["bayesian_oracle"]
    row = scaling["rounds"][0]
    assert set(row) == {"two_workers_one_core_each", "one_worker_one_core", "one_worker_two_cores", "one_process_two_cores"}
    assert all(r["trials"] == 3 and r["steady_trials_per_minute"] > 0 for r in row.values())
    assert 0 < scaling["chief_cpu_share"] < 1 and scaling["requests_per_trial"] >= 4  # at least propose, read back, report, end
    assert set(oracle["proposal_seconds_at_completed_trials"]) == {"5", "10"} and all(t > 0 for t in oracle["proposal_seconds_at_completed_trials"].values())


@pytest.mark.slow
def test_multiworker_benchmark_quick_run(tmp_path: Path):
    report = run_quick("multiworker.py", tmp_path / "multiworker.json")
    assert set(report["rounds"][0]) == {"two_workers_one_core_each", "two_workers_custom_loop", "one_process_one_core", "one_process_two_cores"}
    assert all(rate > 0 for rate in report["rounds"][0].values())
    assert report["two_workers_over_one_process_one_core"] > 0 and report["custom_loop_over_fit_two_workers"] > 0


@pytest.mark.slow
def test_pace_probe_benchmark_quick_run(tmp_path: Path):
    row = run_quick("pace_probe.py", tmp_path / "pace.json")["sets"]["digits"]
    assert row["run_epoch_seconds"] > 0 and len(row["probes"]) == len(row["probe_over_run"]) == 1 and row["probes"][0] > 0


def test_pace_probe_refuses_an_unknown_set_in_one_line():
    done = subprocess.run([sys.executable, "benchmarks/pace_probe.py", "--sets", "flower"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2 and "--sets: unknown flower; choose from flowers, hymenoptera, digits" in done.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_search_quality_benchmark_quick_run(tmp_path: Path):
    out = tmp_path / "quality.json"
    arms = run_quick("search_quality.py", out)["sets"]["digits"]  # digits come with scikit-learn: no shared data needed
    assert set(arms) == {"shipped", "random_epochs", "asha", "example"}
    for row in arms.values():
        assert 0 <= row["holdout"]["accuracy"] <= 1 and row["holdout"]["num_images"] > 0
    assert arms["asha"]["networks_judged"] >= 1 and arms["asha"]["trials_per_rung"]["0"] >= 1
    assert arms["shipped"]["networks_judged"] >= 1 and arms["random_epochs"]["overrides"] == ["tune.trial_budget=epochs", "train.epochs=8"]
    assert 1 <= arms["example"]["epochs_run"] <= arms["example"]["epochs_planned"]


@pytest.mark.slow
def test_export_benchmark_quick_run(tmp_path: Path):
    out = tmp_path / "export.json"
    rows = run_quick("export.py", out)["models"]["baseline_cnn@64"]
    assert set(rows) == {"keras", "saved_model", "tflite", "onnx"}
    assert all(r["size_mb"] > 0 and r["one_image_ms"] > 0 and r["max_abs_diff"] < 1e-4 for r in rows.values())
    assert rows["keras"]["latency_vs_keras"] == 1.0


@pytest.mark.slow
def test_quality_benchmark_quick_run(tmp_path: Path):
    from tests.conftest import require_shared

    require_shared("hymenoptera")
    out = tmp_path / "quality.json"
    sets = run_quick("quality.py", out, "--sets", "hymenoptera", "digits")["sets"]
    assert set(sets) == {"hymenoptera", "digits"}
    for row in sets.values():
        for side in ("toolkit", "plain_keras"):
            assert 0 <= row[side]["accuracy"] <= 1 and row[side]["log_loss"] > 0 and row[side]["seconds"] > 0
        assert row["plain_keras"]["seconds"] >= 0.9 * row["toolkit"]["seconds"]  # the plain model gets the same budget


@pytest.mark.slow
def test_ensembles_benchmark_quick_run(tmp_path: Path):
    from tests.conftest import require_shared

    flowers = require_shared("flowers")
    out = tmp_path / "ensembles.json"
    report = run_quick("ensembles.py", out, "--data", str(flowers))
    for row in ("single_model", "single_model_tta", "fold_ensemble", "fold_ensemble_tta", "out_of_fold"):
        assert 0 <= report[row]["accuracy"] <= 1 and report[row]["log_loss"] > 0
    assert report["folds"] == 2 and report["holdout_images"] > 0


@pytest.mark.slow
def test_finetune_benchmark_quick_run(tmp_path: Path):
    from tests.conftest import require_shared, require_xception_weights

    require_xception_weights()
    require_shared("hymenoptera")
    row = run_quick("finetune_quality.py", tmp_path / "compare.json", "--sets", "hymenoptera")["compare"]["hymenoptera"]
    for side in ("toolkit", "keras_io"):
        assert 0 <= row[side]["accuracy"] <= 1 and row[side]["log_loss"] > 0 and row[side]["seconds"] > 0
        assert all(stage["epochs"] == 1 and stage["seconds"] > 0 for stage in row[side]["stages"].values()) and len(row[side]["stages"]) == 2
    assert isinstance(row["toolkit_wins"], bool)
    speed = run_quick("finetune_quality.py", tmp_path / "features.json", "--part", "features", "--sets", "hymenoptera")["features"]
    for side in ("cached", "frozen_backbone"):
        assert len(speed[side]["epoch_s"]) == len(speed[side]["val_accuracy"]) == 2 and speed[side]["median_epoch_s"] > 0
    assert speed["epoch_speedup"] > 0 and 0 <= speed["target_val_accuracy"] <= 1
    sizes = run_quick("finetune_quality.py", tmp_path / "sizes.json", "--part", "sizes", "--sets", "hymenoptera", "--sizes", "96")["sizes"]
    assert 0 <= sizes["hymenoptera"]["96"]["accuracy"] <= 1 and sizes["hymenoptera"]["96"]["minutes"] > 0
    found = run_quick("finetune_quality.py", tmp_path / "search.json", "--part", "search", "--sets", "hymenoptera")["search"]
    assert found["search"]["trials"] == 2 and found["search"]["best"]["image_size"] in (96, 128)
    same_time = found["finetune_yaml_same_time"]
    assert 1 <= same_time["stages"]["finetune"]["epochs"] <= same_time["planned_finetune_epochs"] and isinstance(found["search_wins"], bool)


def test_search_quality_refuses_an_unknown_set_or_arm_in_one_line():
    cases = (("--sets", "flower", "--sets: unknown flower; choose from flowers, hymenoptera, digits"), ("--arms", "shiped", "--arms: unknown shiped"))
    for flag, value, message in cases:
        done = subprocess.run([sys.executable, "benchmarks/search_quality.py", flag, value], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1]
