"""Keeps tests independent of each other's logging setup.

`posfeed` commands call :func:`pipeline.logs.setup_logging`, which installs a root handler and sets
logger levels; this autouse fixture puts the logging configuration back after every test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pipeline.logs import NOISY_LOGGERS


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in (*NOISY_LOGGERS, "pipeline")}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)
