"""Formatting of metric values for the report pages and their figures: values, confidence
intervals and the operating point in words. Apart from views and figures, which both use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def format_value(value: float | None, digits: int = 3) -> str:
    """A metric value, or "n/a" for null (undefined)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_ci(interval: Mapping[str, Any] | None, digits: int = 3) -> str:
    """The CI as "[low, high]", or "n/a" when the interval is undefined."""
    if not interval or interval.get("ci_low") is None or interval.get("ci_high") is None:
        return "n/a"
    return f"[{interval['ci_low']:.{digits}f}, {interval['ci_high']:.{digits}f}]"


def format_interval(interval: Mapping[str, Any] | None, digits: int = 3) -> str:
    """Value and CI as "value [low, high]" (index cards); "n/a" when the value is null."""
    if not interval or interval.get("value") is None:
        return "n/a"
    ci = format_ci(interval, digits)
    value = format_value(interval["value"], digits)
    return value if ci == "n/a" else f"{value} {ci}"


def operating_label(point: Mapping[str, Any]) -> str:
    """The operating point as the figures' legend and the cards name it."""
    if point.get("rule") == "threshold" and point.get("threshold") is not None:
        return f"operating point (threshold {point['threshold']:.2f})"
    return "operating point (argmax)"
