"""Progress of long work outside `fit` (checking or decoding every image of a large set): a tqdm bar when the output
is a terminal, and one line in the log when it ends, so that logs of batch jobs stay quiet."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

PROGRESS_MIN_ITEMS = 2000  # smaller sets take a second or two: no bar, no line
log = logging.getLogger(__name__)
T = TypeVar("T")


def progress(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Yield `items`, showing `description: n/total` on a terminal (tqdm hides itself elsewhere) for large sets."""
    if total < PROGRESS_MIN_ITEMS:
        yield from items
        return
    started = time.perf_counter()
    with tqdm(items, total=total, desc=description, unit="img", disable=None, mininterval=0.5, leave=False) as bar:
        yield from bar
    log.info("%s: %d images in %.0f s", description, total, time.perf_counter() - started)
