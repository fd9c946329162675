"""Execute the notebooks in place, in a real Jupyter kernel, so that they are committed with their outputs.

.venv/bin/python notebooks/execute.py                 # every notebook (make notebooks)
.venv/bin/python notebooks/execute.py 03_search.ipynb
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # the kernel inherits it: no package-index check at import
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(names: list[str]) -> int:
    for path in [HERE / name for name in names] or sorted(HERE.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        nbformat.write(nb, path)
        print(f"executed: {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
