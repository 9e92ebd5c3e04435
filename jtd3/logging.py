"""Run logging: TensorBoard scalars (tensorboardX) and CSV tables in one run directory.

The only module that writes logs. ``RunLogger(run_dir, purge_step=step)`` on resume makes TensorBoard hide the
events a killed process wrote after the checkpoint it resumes from, so no step appears twice.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter

__all__ = ["RunLogger", "append_csv_row", "read_scalars"]


def _as_float(value: Any) -> float:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"a logged scalar must have one element, got shape {arr.shape}")
    return float(arr.reshape(()))


class RunLogger:
    """TensorBoard writer for one run directory.

    Args:
        run_dir: the run directory; event files go straight into it.
        purge_step: on resume, the step of the restored checkpoint: events at or after it from earlier
            processes are discarded by TensorBoard.
        flush_secs: how often pending events reach the disk.
    """

    def __init__(self, run_dir: str | os.PathLike, purge_step: int | None = None, flush_secs: int = 10):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # tensorboardX names event files by the second and the host: a resumed process within the same second
        # would overwrite the first file. A nanosecond suffix keeps both, in chronological (lexicographic) order.
        self._writer = SummaryWriter(
            logdir=str(self.run_dir),
            purge_step=purge_step,
            flush_secs=flush_secs,
            filename_suffix=f".{time.time_ns():020d}",
        )

    def scalars(self, metrics: Mapping[str, Any], step: int) -> None:
        """Write every entry of ``metrics`` as a scalar at ``step`` (non-finite values are written as they are)."""
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, _as_float(value), global_step=int(step))

    def text(self, tag: str, text: str, step: int) -> None:
        self._writer.add_text(tag, text, global_step=int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def append_csv_row(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` to a CSV file, writing the header when the file is new.

    The columns of an existing file are kept; a row with other keys is an error (a silent column shift would
    corrupt the table).
    """
    path = Path(path)
    values = {k: (_as_float(v) if isinstance(v, (np.ndarray, np.generic)) else v) for k, v in row.items()}
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh))
        if set(header) != set(values):
            raise ValueError(f"{path}: row keys {sorted(values)} differ from the file's columns {sorted(header)}")
        with open(path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=header).writerow(values)
    else:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(values))
            writer.writeheader()
            writer.writerow(values)


def read_scalars(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run directory as ``{tag: [(step, value), ...]}``, the way TensorBoard shows them.

    Uses TensorBoard's own event reader, so events purged by a resume (``purge_step``) are left out.
    """
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.SCALARS: 0}, purge_orphaned_data=True
    )
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags()["scalars"]:
        out[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return out
