"""The per-epoch record of a training run: :class:`History`, its CSV and its plot."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field

COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "time")


@dataclass
class History:
    """Per-epoch ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` (NaN without
    validation data), ``lr`` and wall ``time`` in seconds; ``steps`` holds the loss
    of every training step, and ``partial`` the running totals of an epoch that was
    interrupted (saved mid-epoch), from which a resumed ``fit`` continues."""

    rows: list[dict] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    partial: dict | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, column: str) -> list:
        return [row[column] for row in self.rows]

    def to_dict(self) -> dict:
        return {"rows": self.rows, "steps": self.steps, "partial": self.partial}

    @classmethod
    def from_dict(cls, data: dict) -> History:
        return cls([dict(row) for row in data.get("rows", [])], list(data.get("steps", [])),
                   data.get("partial"))

    def to_csv(self, path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)

    def plot(self, path) -> str:
        """Write loss and accuracy curves (train and validation) to a PNG."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from None
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        epochs = self["epoch"]
        for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
            ax.plot(epochs, self[key], "o-", label="train")
            if not all(math.isnan(v) for v in self[f"val_{key}"]):
                ax.plot(epochs, self[f"val_{key}"], "s--", label="validation")
            ax.set_xlabel("epoch")
            # epochs are whole: no 0.5 or 2.25 ticks between them on a short run
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return os.fspath(path)
