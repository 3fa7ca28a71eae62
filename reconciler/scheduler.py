"""The scheduler's public API (facade over reconciler.scheduling); see docs/scheduler.md."""

from __future__ import annotations

from .scheduling import *  # noqa: F403
from .scheduling import __all__ as __all__
