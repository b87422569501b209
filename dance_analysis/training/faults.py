"""The fault-injection points (:mod:`dance_analysis.faults`), under their earlier name."""

from __future__ import annotations

from ..faults import ENV, SLOW_ENV, fault_point

__all__ = ["ENV", "SLOW_ENV", "fault_point"]
