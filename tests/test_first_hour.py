"""What a new user meets first: one-line training, shipped configs by name, every value checked at load, the public
API, a closed pipe, a missing TensorFlow, and the declared dependencies."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from app.cli import main
from app.config import ConfigError, load_config, shipped_configs
from tests.conftest import CLASSES, COLORS, make_image

REPO = Path(__file__).resolve().parents[1]

# (override, the key named, the closest valid value suggested): the misspellings a user makes
MISSPELLINGS = [
    ("train.optimizer=adamx", "train.optimizer", "adam"),
    ("model.name=resnet5", "model.name", "resnet50"),
    ("train.schedule=cosin", "train.schedule", "cosine"),
    ("finetune.schedule=cosin", "finetune.schedule", "cosine"),
    ("augment.train=medum", "augment.train", "medium"),
    ("augment.eval=nne", "augment.eval", "none"),
    ("augment.tta=flips", "augment.tta", "flip"),
    ("train.distribute=mirror", "train.distribute", "mirrored"),
    ("train.class_weight=balanc", "train.class_weight", "balanced"),
    ("train.monitor=val_los", "train.monitor", "val_loss"),
    ("tune.tuner=bayes", "tune.tuner", "bayesian"),
    ("tune.objective=acc", "tune.objective", "accuracy"),
    ("tune.trial_budget=epoch", "tune.trial_budget", "epochs"),
    ("tune.space.optimizer=[adam, adamx]", "tune.space.optimizer", "adam"),
]


@pytest.mark.parametrize(("override", "key", "closest"), MISSPELLINGS, ids=[m[0] for m in MISSPELLINGS])
def test_a_misspelled_value_is_one_line_naming_the_key_and_the_closest_choice(
    override: str, key: str, closest: str, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    command = "tune" if override.startswith("tune.") else "train"
    assert main([command, str(folder_dataset), "--set", override, "--set", f"output.dir={runs}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: config key {key}") and f"did you mean {closest!r}?" in err
    assert not runs.exists()  # refused before any run (or search) folder exists
    assert main(["config", "--set", override]) == 2  # `imgclf config` reports the same error
    assert capsys.readouterr().err.strip() == err


def test_app_values_are_checked_by_load_config_itself() -> None:
    with pytest.raises(ConfigError, match=r"train.optimizer: 'adamx' is not one of adam, adamw, sgd; did you mean 'adam'\?"):
        load_config(overrides=["train.optimizer=adamx"])
    with pytest.raises(ConfigError, match="augment.train: 'missing.yaml' not found"):
        load_config(overrides=["augment.train=missing.yaml"])
    assert load_config(overrides=["augment.train=missing.yaml"], check_files=False).augment.train == "missing.yaml"  # a saved run's
    with pytest.raises(ConfigError, match="data.image_size: xception needs inputs of at least 71x71 pixels, got 64x64"):
        load_config("finetune", ["data.image_size=64"])  # at load, not after the images are decoded


def test_the_data_argument_is_data_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "my images/", "-c", "finetune", "--set", "train.epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["train"] == "my images/" and printed["model"]["name"] == "xception" and printed["train"]["epochs"] == 3
    assert main(["config", "123"]) == 0  # a path that YAML would read as a number stays a path
    assert yaml.safe_load(capsys.readouterr().out)["data"]["train"] == "123"


def test_the_built_in_defaults_are_the_example_config() -> None:
    assert load_config() == load_config("example")


def test_shipped_configs_by_name_and_a_misspelled_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(shipped_configs()) == {"example", "finetune", "search", "finetune_search"}
    for name in shipped_configs():
        assert main(["config", "-c", name]) == 0  # each loads, and its tune section parses
    capsys.readouterr()
    assert main(["config", "-c", "finetun"]) == 2
    assert "did you mean 'finetune'?" in capsys.readouterr().err


def test_init_copies_the_shipped_configs_and_keeps_the_users(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "my_configs"
    assert main(["init", str(target)]) == 0
    assert {p.name for p in target.glob("*.yaml")} == {f"{name}.yaml" for name in shipped_configs()}
    assert (target / "augment" / "digits.yaml").is_file()
    (target / "example.yaml").write_text("train: {epochs: 3}\n")  # the user's edit
    assert main(["init", str(target)]) == 2 and "--force" in capsys.readouterr().err
    assert load_config(target / "example.yaml").train.epochs == 3
    assert main(["init", str(target), "--force"]) == 0 and load_config(target / "example.yaml").train.epochs == 30
    (tmp_path / "a_file").write_text("")
    assert main(["init", str(tmp_path / "a_file")]) == 2 and "is a file" in capsys.readouterr().err


def test_a_closed_pipe_is_not_a_traceback() -> None:
    done = subprocess.run(f"{sys.executable} -m app models --blocks resnet50 | head -2", shell=True, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert len(done.stdout.splitlines()) == 2 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_without_tensorflow_the_cli_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    assert main(["models"]) == 2
    assert "pip install 'imgclf[cpu]'" in capsys.readouterr().err


def test_the_public_api_trains_and_predicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python snippet, as written, on a tiny folder in the current directory."""
    monkeypatch.chdir(tmp_path)
    for c, name in enumerate(CLASSES):
        for i in range(6):
            make_image(tmp_path / "my_images" / name / f"{i}.png", COLORS[name], seed=10 * c + i)
        make_image(tmp_path / "new_images" / f"{name}.png", COLORS[name], seed=99 + c)
    snippet = re.search(r"## In Python\n\n```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the documented snippet itself
    frame = namespace["probabilities"]
    assert list(frame.columns) == ["id", *sorted(CLASSES)] and sorted(frame["id"]) == sorted(CLASSES)
    assert ((frame[list(CLASSES)].sum(axis=1) - 1).abs() < 1e-5).all()
    assert (namespace["result"].run_dir / "model.keras").is_file()


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_every_imported_package_is_declared() -> None:
    modules = set()
    for folder in ("app", "pipelines", "tuning"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"app", "pipelines", "tuning"}
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = {m for m in third_party if not {d.lower().replace("_", "-") for d in distributions.get(m, [m])} & declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"
    assert {"tensorflow-cpu", "tensorflow"} <= declared  # the cpu and gpu extras: one TensorFlow build each


def test_the_bounds_hold_what_is_tested() -> None:
    """pyproject's bounds admit the versions requirements.txt pins (and tests), and bound what the toolkit patches."""
    from packaging.requirements import Requirement

    pins = dict(line.split("#")[0].strip().split("==") for line in (REPO / "requirements.txt").read_text().splitlines() if "==" in line.split("#")[0])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for raw in [*project["dependencies"], *project["optional-dependencies"]["cpu"]]:
        requirement = Requirement(raw)
        if requirement.name in pins:
            assert requirement.specifier.contains(pins[requirement.name]), f"{raw} excludes the tested {requirement.name}=={pins[requirement.name]}"
    for patched in ("keras", "keras-tuner"):
        assert any(Requirement(r).name == patched and "<" in str(Requirement(r).specifier) for r in project["dependencies"])
    assert project["requires-python"] == ">=3.11"
