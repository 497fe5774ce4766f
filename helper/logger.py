"""What a run reports: console lines, TensorBoard events, ``metrics.jsonl`` and ``summary.json``.

Only the main process constructs a :class:`RunLogger` that writes; the others get one whose
methods do nothing, so callers never test the rank.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class RunLogger:
    """Console, TensorBoard and JSON logs of one run."""

    def __init__(self, run_dir: Path, tensorboard_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.run_dir, self.tensorboard_dir = run_dir, tensorboard_dir
        self._writer: SummaryWriter | None = None

    @property
    def writer(self) -> SummaryWriter:
        """Created on the first record, so that a run that fails early leaves no folder behind.

        TensorBoard is imported here, not with the module, so that ``--help`` and a usage error
        do not wait for it.
        """
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))
        return self._writer

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def epoch(self, record: dict[str, Any], step: int) -> None:
        """Append one epoch's record to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        writer = self.writer
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(_json_safe(record)) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "epoch":
                writer.add_scalar(key, value, step)
        writer.flush()

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Make metrics.jsonl hold exactly ``records`` (a resumed run drops epochs it redoes)."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(_json_safe(record)) + "\n" for record in records)
        (self.run_dir / "metrics.jsonl").write_text(lines)

    def summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Progress:
    """A progress bar on a terminal; a plain line every ``print_freq`` iterations otherwise."""

    def __init__(self, total: int, description: str, print_freq: int, enabled: bool):
        self.total, self.description, self.print_freq = total, description, print_freq
        self.enabled = enabled
        self.start = time.perf_counter()
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)

    def wants_update(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (1-indexed) should report (this syncs the device)."""
        return self.enabled and (iteration % self.print_freq == 0 or iteration == self.total)

    def update(self, iteration: int, values: dict[str, float]) -> None:
        text = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        if self.bar is not None:
            self.bar.n = iteration
            self.bar.set_postfix_str(text, refresh=True)
        else:
            elapsed = time.perf_counter() - self.start
            print(f"{self.description} [{iteration}/{self.total}] {elapsed:.1f}s {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
