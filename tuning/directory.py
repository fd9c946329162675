"""A search's directory: what makes two searches the same search, and where one is continued or joined.

`<output.dir>/<timestamp>-tune-<model>/` holds the config (config.yaml), KerasTuner's state (oracle.json, trial_*/),
the results (results.py) and, for a distributed search, the workers' logs (workers/). It is an app.resumable
directory: started again with the same config after any interruption, a search continues its newest unfinished one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from app.config import Config, dump_config
from app.resumable import ResumableDir

WORKER_LOGS = "workers"  # the search directory's folder of worker logs (distributed search)
FINISHED_FILE = "search.json"  # written last: a search directory without it was interrupted
# Keys a resumed search may change: the budget (to extend a search), how long workers are waited for, and how much it prints.
RESUMABLE_CHANGES = (("tune", "max_trials"), ("tune", "max_minutes"), ("tune", "worker_timeout"), ("tune", "connect_timeout"), ("train", "verbose"))


def search_identity(config_text: str) -> dict[str, Any]:
    """What makes two searches the same search: the whole config but its budget and verbosity."""
    tree = yaml.safe_load(config_text) or {}
    for section, key in RESUMABLE_CHANGES:
        tree.get(section, {}).pop(key, None)
    return tree


def open_search_dir(config: Config, config_text: str, restart: bool) -> ResumableDir:
    """The search's directory (a `with` block): the newest unfinished search of this config unless `restart`, else a
    new one. A directory named by output.name that holds another search, or a finished one, is refused."""
    return ResumableDir(
        config.output.dir,
        "search",
        config_text,
        finished_file=FINISHED_FILE,
        stem=f"tune-{config.model.name}",
        name=config.output.name,
        resume=not restart,
        key=search_identity,
    )


def find_running_search(config: Config) -> Path:
    """The search directory a worker joins: output.dir/output.name, else the newest unfinished search of this config."""
    from tuning.distributed.protocol import DistributedError  # the package's __init__ imports this module

    path = open_search_dir(config, dump_config(config), restart=False).find(check_lock=False)  # the chief holds the lock
    if path is not None:
        return path
    raise DistributedError(
        f"no unfinished search of this config under {config.output.dir}/. Fix: start the chief first (imgclf tune -c FILE --role chief --oracle HOST:PORT) "
        "with the same config and --set values, and give every machine the same output.dir (a shared folder) and data paths"
    )
