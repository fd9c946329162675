"""The worked examples in notebooks/ really run, in a real Jupyter kernel (nbclient), from the notebooks' folder.

The notebooks are committed with their outputs (`make notebooks` executes them in place); here a copy is executed
afresh, every cell must succeed, and the file each notebook ends with (its `path`: a submission, or the explanation
pictures) must exist."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import require_shared, require_xception_weights

NEEDS_SHARED = {"04_kaggle.ipynb": ("dog-breed",), "06_finetune.ipynb": ("hymenoptera",)}  # real photos beside the repository: skipped where absent
NEEDS_WEIGHTS = {"06_finetune.ipynb"}  # Keras' Xception ImageNet weights, fetched by ../shared/weights/xception_imagenet.py
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(notebook: Path) -> None:
    if notebook.name in NEEDS_SHARED:
        require_shared(*NEEDS_SHARED[notebook.name])
    if notebook.name in NEEDS_WEIGHTS:
        require_xception_weights()
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import os\nassert os.path.isfile(path), path\nprint('output ok:', path)"))
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}).execute()
    last = nb.cells[-1].outputs
    assert any("output ok:" in output.get("text", "") for output in last), last
