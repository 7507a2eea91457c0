"""Evaluation output: a printed table, a JSON file with every number, a recall@K / top-K plot and a confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmpt_lite.fileio import atomic_write_text


def format_table(title: str, rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """A fixed-width text table: ``title``, a header of ``columns``, one line per entry of ``rows``."""
    width = max([len(name) for name in rows] + [8])
    widths = [max(8, len(c)) for c in columns]  # a longer column name widens its column instead of shifting the rest
    lines = [title, f"{'':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))]
    for name, values in rows.items():
        cells = []
        for column, w in zip(columns, widths, strict=True):
            value = values.get(column)
            if value is None:
                cells.append(f"{'-':>{w}}")
            else:
                cells.append(f"{value:>{w}.2f}" if isinstance(value, float) else f"{value:>{w}}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no inf/NaN
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, result: dict) -> None:
    """Write ``result`` (numpy values converted, non-finite floats as null) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_jsonable(result), indent=2) + "\n")


def plot_curves(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], *, title: str,
                xlabel: str = "K", ylabel: str = "recall@K") -> None:
    """One line per curve (ks int [K], values in [0, 1] [K]); log-scaled K axis when K spans > 20."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training nodes or CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for name, (ks, values) in curves.items():
        ax.plot(ks, 100 * np.asarray(values), label=name, drawstyle="steps-post")
    if max(len(ks) for ks, _ in curves.values()) > 20:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=f"{ylabel} (%)", ylim=(0, 100))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(path: str | Path, matrix: np.ndarray, classes: list[str], *, title: str) -> None:
    """Row-normalised confusion matrix (int [C, C], rows = true class, columns = predicted) as a heat map;
    class names on the axes up to 40 classes (beyond that they would not be legible)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training nodes or CI
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    side = min(12.0, max(5.0, 3.0 + 0.25 * len(classes)))
    fig, ax = plt.subplots(figsize=(side, side), dpi=120)
    image = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
    if len(classes) <= 40:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, label="% of the true class")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
