"""The wheel is a working tool: built from the repository, installed (not editable) into a fresh virtual environment,
run from another folder: the shipped configs are package data and the demo trains."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_another_folder(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: setuptools writes build/ beside the sources
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "runs", "build", "dist", "*.egg-info", "__pycache__", "results"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", source], cwd=tmp_path)  # setuptools from the index
    (wheel,) = (tmp_path / "dist").glob("imgclf-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python, imgclf = venv / "bin" / "python", venv / "bin" / "imgclf"
    run([python, "-m", "pip", "install", "--no-deps", "-q", wheel], cwd=tmp_path)
    # Its dependencies are this environment's, appended to its path (installing TensorFlow again would take minutes);
    # a path line in a .pth file does not run that folder's own .pth files, so the editable install stays out of it.
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = run([python, "-c", "import app; print(app.__file__)"], cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv), f"app imported from {where}, not from the wheel"

    shown = run([imgclf, "config", "-c", "finetune"], cwd=tmp_path).stdout
    assert "name: xception" in shown
    run([imgclf, "init", "configs"], cwd=tmp_path)
    assert (tmp_path / "configs" / "finetune_search.yaml").is_file() and (tmp_path / "configs" / "augment" / "digits.yaml").is_file()
    demo = run([imgclf, "demo", "--set", "train.epochs=2"], cwd=tmp_path, IMGCLF_CACHE=str(tmp_path / "cache")).stdout
    assert "accuracy:" in demo and (tmp_path / "runs").is_dir()
