"""The documentation stays true: every `imgclf` command line in README.md and docs/ parses, its `--set` keys and
values load, and its `-c` names a shipped config or a file; every page the README links exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from app.cli import build_parser
from app.config import load_config, shipped_configs

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
USER_FILES = ("my.yaml", "search.yaml", "best.yaml")  # configs of the user's own that the examples name


def command_lines(page: Path) -> list[str]:
    """`imgclf ...` lines of the page's shell code blocks (after any environment assignment)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.splitlines():
            line = re.sub(r"^(\w+='[^']*'\s+)+", "", line.strip())  # TF_CONFIG='{...}' imgclf ...
            if line.startswith("imgclf "):
                lines.append(line)
    return lines


COMMANDS = [(page.name, line) for page in PAGES for line in command_lines(page)]


def test_the_pages_have_commands() -> None:
    assert len(COMMANDS) >= 30 and {"README.md", "search.md", "kaggle.md"} <= {page for page, _ in COMMANDS}


@pytest.mark.parametrize(("page", "line"), COMMANDS, ids=[f"{p}:{line[:60]}" for p, line in COMMANDS])
def test_every_documented_command_parses(page: str, line: str) -> None:
    words = shlex.split(line, comments=True)[1:]
    try:
        args = build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{line}` does not parse (exit {exc.code})")
    config = getattr(args, "config", None)
    assert config is None or config in shipped_configs() or config in USER_FILES or config.endswith(".yaml"), f"{page}: -c {config}"
    if getattr(args, "overrides", None):
        load_config(shipped_configs()[config] if config in shipped_configs() else None, args.overrides)  # keys and values load


def test_every_linked_page_exists() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert sum(len(line.split()) for line in lines) <= 1500
    assert max(len(line) for line in lines if not line.startswith("|")) <= 120 and max(len(line) for line in lines) <= 160
