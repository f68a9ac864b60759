"""Helpers of the domain's background loops (index follow, join wake-ups, join sweep)."""

from __future__ import annotations

import logging
import sys

from discovery.core.errors import Unavailable


def log_retry(logger: logging.Logger, message: str, event: str) -> None:
    """Log the exception being handled by a background loop that will retry.

    A store outage (``Unavailable``) is expected and reported by health and metrics, so it
    is a one-line warning; anything else is an error with its stack.
    """
    error = sys.exc_info()[1]
    if isinstance(error, Unavailable):
        logger.warning(message, extra={"event": event, "error": type(error).__name__})
    else:
        logger.exception(message, extra={"event": event})
