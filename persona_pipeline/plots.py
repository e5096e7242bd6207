"""Matplotlib figures saved as PNG and embedded in Dagster markdown metadata."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .storage import write_bytes


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def line_plot(
    series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, ylabel: str, hline: float | None = None
) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, (xs, ys) in series.items():
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _png(fig)


def scatter_plot(
    points: list[tuple[float, float, str]], title: str, xlabel: str, ylabel: str, highlight: str | None = None
) -> bytes:
    """Labelled points (x, y, label); ``highlight`` is drawn in a contrasting colour."""
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for x, y, label in points:
        ax.scatter([x], [y], color="tab:red" if label == highlight else "tab:blue", s=30)
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return _png(fig)


def heatmap(matrix: list[list[float]], labels: list[str], title: str, vmin: float = -1.0, vmax: float = 1.0) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 4.2), dpi=100)
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title)
    return _png(fig)


def bar_plot(groups: list[str], series: dict[str, list[float]], title: str, ylabel: str) -> bytes:
    """Grouped bars: one group per entry of ``groups``, one bar per series."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=100)
    width = 0.8 / max(1, len(series))
    for k, (name, vals) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(groups))], vals, width=width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, rotation=30, ha="right", fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    ax.axhline(0, color="black", linewidth=0.6)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _png(fig)


def save_png(png: bytes, path: Path) -> Path:
    """Write the PNG atomically: a killed step leaves the previous plot whole, never a truncated image."""
    write_bytes(path, png)
    return path


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
