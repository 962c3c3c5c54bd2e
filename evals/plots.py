"""Grouped bar charts, the one plot shape every eval report draws (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence


def grouped_bars(path: Path, groups: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str, title: str,
                 size: tuple[float, float] = (8, 4), ylim: tuple[float, float] | None = None, rotate: bool = False) -> None:
    """A PNG at ``path``: one cluster of bars per group, one bar per series in each (``series[name][i]`` is the
    value for ``groups[i]``), with a legend of the series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    width = 0.8 / max(1, len(series))
    for n, (name, values) in enumerate(series.items()):
        ax.bar([i + n * width for i in range(len(groups))], list(values), width, label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))], list(groups))
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    if rotate:
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
