"""The few statistics the eval reports share: rounded means and paired differences with a 95% interval."""

from __future__ import annotations

from typing import Sequence


def rounded_mean(values: Sequence[float], empty: float | None = None) -> float | None:
    """The mean to 4 decimals, or ``empty`` when there are no values."""
    return round(sum(values) / len(values), 4) if values else empty


def paired_interval(diffs: Sequence[float]) -> dict[str, float]:
    """Mean of per-question differences (one method minus another on the same questions), normal 95% interval."""
    if not diffs:
        raise ValueError("no paired questions to compare")
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / max(1, len(diffs) - 1)) ** 0.5
    return {"mean": round(mean, 4), "ci95": round(1.96 * sd / len(diffs) ** 0.5, 4), "n": len(diffs)}
