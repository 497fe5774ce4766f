"""Run folders written by hand, with known accuracies.

The summary and plot tests need save folders whose numbers they know in advance; these are
laid out exactly as train_teacher.py and train_student.py lay out theirs (folders named and
placed by :mod:`helper.run_names`, ``metrics.jsonl``, ``summary.json``), without training anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from helper import run_names

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"images_per_second"}  # the one record entry that differs between equal trainings


def write_run(save_dir: Path, model: str, test_acc: Sequence[float], *, teacher: str | None = None,
              method: str | None = None, weights: tuple[float, float, float] = (1.0, 0.0, 0.0),
              trial: str = "1", dataset: str = "cifar100", val_acc: Sequence[float] | None = None,
              finished: bool | None = True) -> Path:
    """A run folder whose epoch ``e`` had test accuracy ``test_acc[e-1]`` (and test loss 100 - it).

    A vanilla run (train_teacher.py) when ``teacher`` is None, else a distilled one. The best
    epoch is chosen on ``val_acc`` when given, else on ``test_acc``, as the driver chooses it.
    ``finished=None`` writes no summary.json at all (a run that was cut off). Each epoch is
    recorded as half an hour of wall time.
    """
    gamma, alpha, beta = weights
    if teacher is None:
        args = {"model": model, "dataset": dataset, "trial": trial, "epochs": len(test_acc)}
        kind, name = run_names.VANILLA, run_names.teacher_run_name(model, dataset, trial)
    else:
        args = {"model_s": model, "model_t": teacher, "distill": method, "gamma": gamma, "alpha": alpha,
                "beta": beta, "dataset": dataset, "trial": trial, "epochs": len(test_acc)}
        kind, name = run_names.DISTILLED, run_names.student_run_name(model, teacher, dataset, method, gamma, alpha,
                                                                     beta, trial)
    folder = run_names.run_dir(save_dir, kind, name)
    folder.mkdir(parents=True)
    records = []
    for epoch, accuracy in enumerate(test_acc, 1):
        record = {"stage": "main", "epoch": epoch, "lr": 0.05, "train_loss": 1.0, "test_acc": accuracy,
                  "test_acc_top5": min(100.0, accuracy + 20), "test_loss": 100.0 - accuracy}
        if val_acc is not None:
            record["val_acc"] = val_acc[epoch - 1]
        records.append(record)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    if finished is None:
        return folder
    selected = val_acc if val_acc is not None else test_acc
    best_epoch = max(range(len(selected)), key=lambda index: (selected[index], -index)) + 1
    summary = {
        "run_name": folder.name, "finished": finished, "epochs": len(test_acc),
        "selection": "val_acc" if val_acc is not None else "test_acc", "best_epoch": best_epoch,
        "best_acc": test_acc[best_epoch - 1], "last_acc": test_acc[-1],
        "best_val_acc": None if val_acc is None else val_acc[best_epoch - 1],
        "wall_time_seconds": 1800.0 * len(test_acc), "args": args,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def assert_same_training(a: dict, b: dict) -> None:
    """Two checkpoints of the same training: equal weights, method state, optimizer state and history."""
    for part in ("model", "distiller"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")
    for slot_a, slot_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in slot_a:
            torch.testing.assert_close(slot_a[key], slot_b[key], rtol=0, atol=0)
    strip = [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in a["history"]]
    assert strip == [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in b["history"]]
    assert (a["epoch"], a["best_epoch"]) == (b["epoch"], b["best_epoch"])
