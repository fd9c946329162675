"""CLI: a thin face over train/evaluate/predict; user errors are one line and a non-zero exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from app.cli import main
from app.config import Config, dump_config

REPO = Path(__file__).resolve().parents[1]


def _train(tiny_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    (tmp_path / "c.yaml").write_text(dump_config(tiny_config))
    assert main(["train", "-c", str(tmp_path / "c.yaml"), "--set", "train.epochs=1", *extra]) == 0
    out = capsys.readouterr().out
    return Path(out.split("run directory: ")[1].split("\n")[0])


def test_help_names_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, cwd=REPO, check=True)
    for command in ("demo", "train", "evaluate", "predict", "models", "plot-lr", "find-lr", "tune", "explain", "export", "config", "--set"):
        assert command in result.stdout


def test_config_prints_every_default_and_the_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    assert main(["config", "-c", "example", "--set", "train.epochs=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 7 and printed["data"]["image_size"] == 64
    assert {"data", "augment", "model", "train", "finetune", "tune", "output", "seed"} <= set(printed)  # every section,
    assert "early_stopping_patience" in printed["train"] and "mixed_precision" in printed["train"]  # defaults included
    assert main(["config", "--set", "train.epochs=0"]) == 2  # validated as train would


def test_train_evaluate_predict(tiny_config: Config, csv_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _train(tiny_config, tmp_path, capsys)
    assert (run / "model.keras").is_file()

    assert main(["evaluate", str(run)]) == 0
    assert json.loads((run / "evaluation-val" / "metrics.json").read_text())["num_images"] == 6
    assert {"per_class.csv", "confusion_matrix.png", "mistakes.png"} <= {p.name for p in (run / "evaluation-val").iterdir()}
    assert main(["evaluate", str(run)]) == 2  # exists: needs --force
    assert "already holds an evaluation" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data", str(tiny_config.data.train), "--output", str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["num_images"] == 24

    sample = csv_dataset / "sample_submission.csv"
    assert main(["predict", str(run), "--test", str(sample), "--output", str(tmp_path / "sub.csv")]) == 0
    submission = pd.read_csv(tmp_path / "sub.csv")
    template = pd.read_csv(sample)
    assert list(submission.columns) == list(template.columns) and submission["id"].tolist() == template["id"].tolist()
    assert ((submission[["cat", "dog", "fox"]].sum(axis=1) - 1).abs() < 1e-4).all()

    assert main(["predict", str(run), "--test", str(csv_dataset / "test"), "--output", str(tmp_path / "folder.csv")]) == 0
    assert pd.read_csv(tmp_path / "folder.csv").columns.tolist() == ["id", "label"]
    assert main(["predict", str(run), "--test", str(csv_dataset / "test"), "--output", str(tmp_path / "folder.csv")]) == 2
    assert main(["predict", str(run), "--test", str(csv_dataset / "test"), "--output", str(tmp_path / "p.csv"), "--probabilities"]) == 0
    assert pd.read_csv(tmp_path / "p.csv").columns.tolist() == ["id", "cat", "dog", "fox"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--set", "train.epochz=1"], "unknown config key train.epochz"),
        (["train"], "no training data configured"),
        (["train", "-c", "nope.yaml"], "config file not found"),
        (["train", "--set", "data.train=/no/such/folder"], "/no/such/folder: no such folder"),
        (["evaluate", "/no/such/run"], "not a finished run directory"),
        (["predict", "/no/such/run"], "not a finished run directory"),
    ],
)
def test_user_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_bad_model_option_is_one_line(tiny_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text(dump_config(tiny_config))
    assert main(["train", "-c", str(tmp_path / "c.yaml"), "--set", "train.optimizer=adamax"]) == 2
    assert "train.optimizer: 'adamax' is not one of adam, adamw, sgd" in capsys.readouterr().err
    assert not Path(tiny_config.output.dir).exists()  # refused when the config loads: no run folder left behind


def test_predict_with_mismatched_test_folder(tiny_config: Config, csv_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _train(tiny_config, tmp_path, capsys)
    (csv_dataset / "test" / "t05.jpg").rename(csv_dataset / "test" / "extra.jpg")
    code = main(["predict", str(run), "--test", str(csv_dataset / "sample_submission.csv"), "--output", str(tmp_path / "s.csv")])
    assert code == 2 and "missing" in capsys.readouterr().err and not (tmp_path / "s.csv").exists()


def test_image_lost_during_prediction_is_one_line(tiny_config: Config, csv_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _train(tiny_config, tmp_path, capsys, "--set", "data.check_images=false")
    (csv_dataset / "test" / "t02.jpg").write_bytes(b"garbage")  # not screened up front: fails inside tf.data
    code = main(["predict", str(run), "--test", str(csv_dataset / "test"), "--output", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "t02.jpg" in err and "\n" not in err


def test_an_unreadable_image_met_during_training_exits_instead_of_hanging(tmp_path: Path) -> None:
    """With data.check_images=false a truncated JPEG surfaces mid-epoch while tf.data has other batch calls in
    flight: the process printed its error, then hung at exit, deleting the iterator (2 of 5 runs of this
    setting before the fix, 0 of 10 after; three runs here)."""
    from PIL import Image

    for name, color in (("a", (200, 0, 0)), ("b", (0, 200, 0))):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(150):
            Image.new("RGB", (64, 64), (color[0], color[1], i)).save(tmp_path / "data" / name / f"{name}{i:03d}.png")
    Image.new("RGB", (200, 200), (9, 9, 9)).save(tmp_path / "whole.jpg", quality=95)
    (tmp_path / "data" / "a" / "a050x.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:400])  # truncated, mid-list
    (tmp_path / "c.yaml").write_text(
        json.dumps(
            {
                "data": {"train": str(tmp_path / "data"), "image_size": 32, "batch_size": 4, "check_images": False, "workers": 0},
                "model": {"blocks": [[4]]},
                "train": {"epochs": 1, "verbose": 0},
                "output": {"dir": str(tmp_path / "runs")},
            }
        )
    )
    for _ in range(3):
        done = subprocess.run([sys.executable, "-m", "app", "train", "-c", str(tmp_path / "c.yaml")], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "a050x.jpg: cannot decode image" in done.stderr


def test_a_damaged_model_file_is_one_clear_line(tiny_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(tiny_config))
    (run / "class_names.json").write_text(json.dumps({"class_names": ["cat", "dog", "fox"], "multilabel": False}))
    (run / "model.keras").write_bytes(b"PK\x03\x04 cut short")  # a truncated archive: Keras calls it "File not found"
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "model.keras: not a complete .keras file" in err and "File not found" not in err and err.count("\n") == 1
