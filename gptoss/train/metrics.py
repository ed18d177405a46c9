"""What a run logs: metrics.csv (+ TensorBoard when installed) and the loss curve it ends with."""

from __future__ import annotations

import csv
from pathlib import Path

from gptoss.util.files import write_file_atomically, write_text_atomically

METRICS_FILE = "metrics.csv"
CURVE_FILE = "loss_curve.png"


class MetricsLog:
    """metrics.csv (one row per log interval, checkpoint and evaluation) and TensorBoard, written by rank 0."""

    COLUMNS = ("step", "tokens", "lr", "train_loss", "grad_norm", "aux_loss", "val_loss", "val_ppl", "val_bpb",
               "seq_len", "data_pool", "tokens_per_s", "elapsed_s")  # fmt: skip

    def __init__(self, run_dir: Path, resumed_step: int | None, tensorboard: bool):
        self.path = run_dir / METRICS_FILE
        if resumed_step is None or not self.path.is_file():
            write_text_atomically(self.path, ",".join(self.COLUMNS) + "\n")
        else:  # drop what the interrupted run logged after its checkpoint: the resumed run redoes it
            kept = [row for row in self.rows() if int(row["step"]) <= resumed_step]
            write_text_atomically(self.path, self._format(kept))
        self.file = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, self.COLUMNS)
        self.tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the tensorboard package is optional
                pass
            else:
                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict) -> None:
        """Append a row (missing columns stay empty); floats keep every digit."""
        self.writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        self.file.flush()
        if self.tensorboard is not None:
            for name, value in row.items():
                if name != "step" and isinstance(value, float):
                    self.tensorboard.add_scalar(name, value, row["step"])

    def rows(self) -> list[dict]:
        """Every row written so far."""
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _format(self, rows: list[dict]) -> str:
        # .get: a metrics.csv written before a column was added lacks it
        lines = [",".join(self.COLUMNS)] + [",".join(row.get(c) or "" for c in self.COLUMNS) for row in rows]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        """Close the files."""
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def plot_loss_curve(rows: list[dict], path: Path, title: str) -> None:
    """Train and validation loss against step, as a PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(column):
        points = [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]
        return [s for s, _ in points], [v for _, v in points]

    figure = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(*series("train_loss"), label="train", linewidth=1)
    axes.plot(*series("val_loss"), "o-", label="validation", markersize=3)
    axes.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    write_file_atomically(path, figure.savefig)
