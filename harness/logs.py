"""The harness's console log: one stderr handler with times, for every entry point."""

from __future__ import annotations

import logging
import sys


def setup_logging() -> None:
    logger = logging.getLogger("harness")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
