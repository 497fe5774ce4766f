"""Linear-probe transfer: how well a frozen network's embedding serves another data set.

    python scripts/transfer.py --path save/students/models/S:wrn_16_2_T:wrn_40_2_.../wrn_16_2_last.pth \\
        --dataset stl10 --data_root data

The CRD paper's protocol (Tian et al., ICLR 2020, Table 5; METHODS.md §3.6), as the
distillers repository's ``transfer_student.py`` runs it: the network is frozen and a new linear
classifier (weights N(0, 0.01²), bias 0) is trained on its pooled embedding with SGD (lr 0.05, or
0.01 for MobileNet/ShuffleNet networks; momentum 0.9, weight decay 5e-4, batch 64) for 120
epochs, the learning rate divided by 10 after epochs 30, 60 and 90. Images are resized to
32×32, augmented with a random 32×32 crop of the 4-pixel zero-padded image and a horizontal
flip, and normalised with the target set's statistics. The number reported is the last epoch's
top-1 test accuracy.

By default the batch-norm layers of the frozen network run as that script runs them, in training
mode: their weights stay fixed but their running statistics follow the new images
(``--bn_stats update``). ``--bn_stats frozen`` keeps the whole network exactly as saved, a strict
linear probe of the checkpoint's features.

Any checkpoint this repository writes can be probed (a teacher, a student, a SimKD student,
whose embedding is its projector's pooled output: what the reused teacher classifier reads),
and so can a released RepDistiller file (``{'model': state_dict}`` in a folder named
``<arch>_...``, or with ``--arch``). The run folder is
``<save_dir>/transfer/models/<source run>/<dataset>_<checkpoint>_trial_<trial>/`` with
``metrics.jsonl``, ``summary.json`` (which also records what was probed), the trained linear
layer ``linear_last.pth``, and TensorBoard events under ``<save_dir>/transfer/tensorboard/``.
``summarize.py`` tabulates these runs beside the published transfer numbers (``--compare``).
Exit status: 0 done, 2 a usage mistake (one line on stderr), 3 a non-finite loss, 4 a failed write.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dataset.arrays import InMemoryDataset
from dataset.batch import Batch
from dataset.tensor_loader import TensorLoader
from distiller_zoo.simkd import SimKD
from errors import UsageError
from helper import checkpoint as ckpt
from helper.cli import EXIT_NONFINITE, EXIT_USAGE, EXIT_WRITE
from helper.driver import select_device
from helper.logger import RunLogger
from helper.loops import NonFiniteLoss, StepConfig, train_one_epoch, validate
from helper.optim import make_scheduler, make_sgd
from helper.options import finite_float, parse_lr_decay_epochs
from helper.run_folder import check_writable, claim_run_folder, saved_files
from helper.run_names import VANILLA, parse_run_name
from helper.seeding import seed_everything
from models import model_dict, model_info
from scripts.transfer_results import TRANSFER_ROOT

HEAD_FILE = "linear_last.pth"
PROBE_WEIGHTS = {"cls": 1.0}  # the probe's only loss term: cross-entropy of the linear layer

# Data set name → (module, reader); the readers take the data root, and Tiny-ImageNet a thread count.
READERS = {
    "stl10": ("dataset.stl10", "load_stl10"),
    "tinyimagenet": ("dataset.tinyimagenet", "load_tinyimagenet"),
    "cifar10": ("dataset.cifar", "load_cifar10"),
    "cifar100": ("dataset.cifar", "load_cifar100"),
    "digits": ("dataset.digits", "load_digits_dataset"),
}
EMBEDDINGS = ("auto", "backbone", "projector")
BN_STATS = ("update", "frozen")
SIMKD_PREFIX = "simkd."


def load_dataset(name: str, data_root: str | Path, workers: int = 1) -> InMemoryDataset:
    """Data set ``name`` of :data:`READERS` at 32×32 (its reader imported only now)."""
    module, function = READERS[name]
    reader = getattr(importlib.import_module(module), function)
    if name == "tinyimagenet":
        return reader(Path(data_root), workers)
    return reader(Path(data_root))


# ---------------------------------------------------------------------------------------------
# The network of a checkpoint, as an embedding and the classifier that reads it.


@dataclass(frozen=True)
class Source:
    """What a checkpoint holds and which experiment it belongs to, as far as it or its folder says.

    ``kind``/``model``/``teacher``/``method``/``weights``/``trial`` are those of the run that
    wrote it (:func:`helper.run_names.parse_run_name` of its recorded run name, or of its folder
    name); a file whose run is unknown is taken for a network trained alone. ``dataset`` is what
    it was trained on (None when nothing records it). ``embedding`` says which features a probe reads.
    """

    path: str
    run: str  # the run's name, or the checkpoint's folder name
    arch: str
    num_classes: int
    dataset: str | None
    kind: str
    model: str
    teacher: str | None
    method: str | None
    weights: tuple[float, float, float] | None
    trial: str | None
    embedding: str

    def record(self) -> dict[str, Any]:
        """The fields as JSON values (a run's ``summary.json`` keeps them under ``"source"``)."""
        record = asdict(self)
        record["weights"] = None if self.weights is None else list(self.weights)
        return record


class EmbeddingNet(nn.Module):
    """A checkpoint's network split into its embedding and the linear classifier reading it.

    For a plain network the embedding is its pooled last feature (``features[-1]``) and the
    classifier its own. For a SimKD student (``projector`` given) it is the projector's output
    on the student's last map, globally pooled, and the classifier the reused teacher's: the map
    is first pooled down to the teacher's height when it is larger, as SimKD aligns the two maps.
    """

    def __init__(self, network: nn.Module, classifier: nn.Linear, projector: nn.Module | None = None,
                 teacher_height: int | None = None):
        super().__init__()
        self.network, self.classifier, self.projector = network, classifier, projector
        self.teacher_height = teacher_height

    @property
    def embedding_dim(self) -> int:
        return self.classifier.in_features

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, embedding_dim]`` features of ``images``."""
        features, _ = self.network(images, is_feat=True)
        if self.projector is None:
            return features[-1]
        feature_map = features[-2]
        if self.teacher_height is not None and feature_map.shape[2] > self.teacher_height:
            feature_map = F.adaptive_avg_pool2d(feature_map, (self.teacher_height, self.teacher_height))
        return F.adaptive_avg_pool2d(self.projector(feature_map), 1).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits the checkpoint's model predicts."""
        return self.classifier(self.embed(images))


def _architecture(checkpoint: dict[str, Any], path: Path, arch: str | None) -> str:
    """The network's architecture: the checkpoint's record, else ``--arch``, else its folder name."""
    recorded = checkpoint.get("arch")
    if recorded is not None and arch is not None and recorded != arch:
        raise UsageError(f"--arch {arch} contradicts {path}, which records architecture {recorded}; drop --arch")
    name = recorded or arch or ckpt.infer_arch_from_path(path)
    if name is None:
        raise UsageError(f"cannot tell the architecture of {path}: pass --arch, or keep the file in a folder "
                         "named <arch>_..., as RepDistiller does")
    if name not in model_dict or model_info[name].input_kind != "cifar":
        raise UsageError(f"{path}: {name} is not a CIFAR network of models.model_dict; the transfer protocol "
                         "probes 32×32 networks")
    return name


def _classifier_key(arch: str) -> str:
    """The state-dict prefix of ``arch``'s final linear layer (``fc``, ``linear``, ``classifier``)."""
    network = model_dict[arch](num_classes=1)
    return next(name for name, module in network.named_modules() if module is network.get_classifier())


def _num_classes(checkpoint: dict[str, Any], state: dict[str, torch.Tensor], arch: str, path: Path) -> int:
    recorded = checkpoint.get("num_classes")
    if recorded is not None:
        return int(recorded)
    key = f"{_classifier_key(arch)}.weight"
    if key not in state:
        raise UsageError(f"{path} has no {key}: it does not hold a {arch}; pass the right --arch")
    return int(state[key].shape[0])


def _load(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = " ".join(str(error).split("\n\t", 1)[-1].split())[:200]
        raise UsageError(f"{path} does not fit {what} ({first}); pass the right --arch") from None


def _simkd_parts(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The SimKD projector and reused classifier kept in a student checkpoint's method state ({} if none)."""
    state = checkpoint.get("distiller")
    if not isinstance(state, dict) or not any(str(key).startswith(SIMKD_PREFIX) for key in state):
        return {}
    return state


def _teacher_height(teacher: str, num_classes: int) -> int:
    """The height of the teacher's last feature map on a 32×32 image (where SimKD aligns the maps)."""
    network = model_dict[teacher](num_classes=num_classes).eval()
    with torch.no_grad():
        features, _ = network(torch.zeros(2, 3, 32, 32), is_feat=True)
    return int(features[-2].shape[2])


def _simkd_network(network: nn.Module, parts: dict[str, torch.Tensor], checkpoint: dict[str, Any],
                   path: Path) -> EmbeddingNet:
    """The student with its SimKD projector and the reused teacher classifier, from the method state."""
    projector_state = {key.removeprefix(SIMKD_PREFIX): value for key, value in parts.items()
                       if key.startswith(SIMKD_PREFIX)}
    first, last = projector_state.get("transfer.0.weight"), projector_state.get("transfer.6.weight")
    weight, bias = parts.get("cls_t.weight"), parts.get("cls_t.bias")
    teacher = checkpoint.get("teacher_arch") or (checkpoint.get("args") or {}).get("model_t")
    if first is None or last is None or weight is None or teacher not in model_dict:
        raise UsageError(f"{path} holds an incomplete SimKD state (projector, teacher classifier and teacher "
                         "architecture are needed); pass --embedding backbone to probe the student network alone")
    factor = (checkpoint.get("args") or {}).get("factor") or max(1, last.shape[0] // first.shape[0])
    projector = SimKD(s_n=first.shape[1], t_n=last.shape[0], factor=int(factor))
    _load(projector, projector_state, path, "the SimKD projector")
    classifier = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    _load(classifier, {"weight": weight, **({"bias": bias} if bias is not None else {})}, path,
          "the teacher classifier")
    return EmbeddingNet(network, classifier, projector.transfer, _teacher_height(teacher, weight.shape[0]))


def _source(checkpoint: dict[str, Any], path: Path, arch: str, num_classes: int, embedding: str,
            source_dataset: str | None) -> Source:
    run = str(checkpoint.get("run_name") or path.resolve().parent.name)
    parsed = parse_run_name(run)
    recorded = checkpoint.get("dataset") or (checkpoint.get("args") or {}).get("dataset") or (
        parsed.dataset if parsed else None)
    if recorded is not None and source_dataset is not None and recorded != source_dataset:
        raise UsageError(f"--source_dataset {source_dataset} contradicts {path}, which was trained on {recorded}; "
                         "drop --source_dataset")
    if parsed is None:
        return Source(str(path), run, arch, num_classes, recorded or source_dataset, VANILLA, arch, None, None,
                      None, None, embedding)
    return Source(str(path), run, arch, num_classes, recorded or source_dataset, parsed.kind, parsed.model,
                  parsed.teacher, parsed.method, parsed.weights, parsed.trial, embedding)


def load_network(path: str | Path, arch: str | None = None, embedding: str = "auto",
                 source_dataset: str | None = None) -> tuple[EmbeddingNet, Source]:
    """The network of checkpoint ``path`` (in eval mode, on the CPU) and what it is.

    ``embedding``: ``"auto"`` reads a SimKD student through its projector and any other network
    through its own pooled features; ``"backbone"`` always reads the network's own features;
    ``"projector"`` insists on SimKD's. Every way the file can be wrong is a usage error.
    """
    path = Path(path)
    checkpoint = ckpt.load_checkpoint(path)
    name = _architecture(checkpoint, path, arch)
    state = ckpt.model_state(checkpoint)
    num_classes = _num_classes(checkpoint, state, name, path)
    network = model_dict[name](num_classes=num_classes)
    _load(network, state, path, f"architecture {name}")
    parts = _simkd_parts(checkpoint)
    if embedding == "projector" and not parts:
        raise UsageError(f"--embedding projector: {path} holds no SimKD projector; use --embedding backbone")
    if parts and embedding != "backbone":
        encoder, kind = _simkd_network(network, parts, checkpoint, path), "simkd projector"
    else:
        encoder, kind = EmbeddingNet(network, network.get_classifier()), "backbone"
    return encoder.eval(), _source(checkpoint, path, name, num_classes, kind, source_dataset)


# ---------------------------------------------------------------------------------------------
# The probe.


class LinearProbe(nn.Module):
    """A frozen :class:`EmbeddingNet` and a new linear classifier on its embedding.

    ``forward(batch)`` returns ``(logits, {"cls": cross-entropy})``, the contract of the training
    loop (:func:`helper.loops.train_one_epoch`). Only the linear layer has gradients. With
    ``update_bn`` the frozen network's batch-norm layers run in training mode whenever the probe
    trains (the distillers script's behaviour); otherwise the network always runs in eval mode.
    """

    def __init__(self, encoder: EmbeddingNet, num_classes: int, update_bn: bool):
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.update_bn = update_bn
        self.head = nn.Linear(encoder.embedding_dim, num_classes)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        if not self.update_bn:
            self.encoder.eval()
        return self

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            embedding = self.encoder.embed(images)
        return self.head(embedding)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.predict(batch.images)
        return logits, {"cls": F.cross_entropy(logits, batch.targets)}


def run_folders(save_dir: str | Path, source: Source, dataset: str, trial: str) -> tuple[Path, Path]:
    """The run folder and TensorBoard folder of probing ``source`` on ``dataset`` (trial ``trial``).

    Nested under the source run's name: the inner name alone never reads as a training run's,
    so ``summarize.py``'s tables never count a probe as a run of its source.
    """
    name = f"{dataset}_{Path(source.path).stem}_trial_{trial}"
    root = Path(save_dir).expanduser() / TRANSFER_ROOT
    return root / "models" / source.run / name, root / "tensorboard" / source.run / name


def _loaders(data: InMemoryDataset, opt: argparse.Namespace,
             device: torch.device) -> tuple[TensorLoader, TensorLoader]:
    common = {"mean": data.mean, "std": data.std, "batch_size": opt.batch_size, "device": device, "seed": opt.seed}
    return (TensorLoader(data.train, train=True, flip=data.flip, **common),
            TensorLoader(data.test, train=False, **common))


def _epoch_record(epoch: int, lr: float, train: dict[str, float], test: dict[str, float]) -> dict[str, Any]:
    """One line of ``metrics.jsonl``, with the keys of a training run's records."""
    return {"stage": "main", "epoch": epoch, "lr": lr,
            **{f"train_{k}" if k != "images_per_second" else k: v for k, v in train.items()},
            "test_acc": test["acc1"], "test_acc_top5": test["acc5"], "test_loss": test["loss"]}


def transfer_summary(name: str, history: Sequence[dict[str, Any]], epochs: int, source: Source,
                     target: dict[str, Any], args: dict[str, Any], wall_time: float) -> dict[str, Any]:
    """``summary.json`` of a probe: the fields of a training run's summary, plus its source and target."""
    last = history[-1] if history else {}
    best = max(history, key=lambda record: (record["test_acc"], -record["epoch"])) if history else {}
    return {
        "run_name": name,
        "finished": len(history) >= epochs,
        "epochs": len(history),
        "selection": "test_acc",
        "best_epoch": best.get("epoch", 0),
        "best_acc": best.get("test_acc"),
        "best_acc_top5": best.get("test_acc_top5"),
        "last_acc": last.get("test_acc"),
        "last_acc_top5": last.get("test_acc_top5"),
        "wall_time_seconds": wall_time,
        "images_per_second": (sum(r["images_per_second"] for r in history) / len(history)) if history else None,
        "transfer": target,
        "source": source.record(),
        "args": args,
    }


def _train(probe: LinearProbe, data: InMemoryDataset, opt: argparse.Namespace, device: torch.device,
           logger: RunLogger) -> list[dict[str, Any]]:
    """Train the probe's linear layer for ``opt.epochs`` epochs; the epoch records."""
    train_loader, test_loader = _loaders(data, opt, device)
    optimizer = make_sgd(list(probe.head.parameters()), opt.learning_rate, opt.momentum, opt.weight_decay)
    scheduler = make_scheduler(optimizer, opt.lr_decay_epochs, opt.lr_decay_rate)
    config = StepConfig(device, print_freq=opt.print_freq)
    history = []
    for epoch in range(1, opt.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        train_loader.set_epoch(epoch)
        train, _ = train_one_epoch(probe, PROBE_WEIGHTS, train_loader, optimizer, config, epoch)
        scheduler.step()
        probe.eval()
        test = validate(probe.predict, test_loader, config)
        history.append(_epoch_record(epoch, lr, train, test))
        logger.epoch(history[-1], step=epoch)
        logger.info(f"epoch {epoch}: train_loss {train['loss']:.4f} train_acc {train['acc1']:.2f} "
                    f"test_acc {test['acc1']:.2f} ({train['images_per_second']:.0f} img/s)")
    return history


def transfer(opt: argparse.Namespace) -> dict[str, Any]:
    """Probe ``opt.path`` on ``opt.dataset`` as :mod:`this script <scripts.transfer>` describes; the summary."""
    start = time.perf_counter()
    device = select_device(opt.device)
    seed_everything(opt.seed, deterministic=False)
    encoder, source = load_network(opt.path, opt.arch, opt.embedding, opt.source_dataset)
    if opt.learning_rate is None:
        opt.learning_rate = 0.01 if model_info[source.arch].small_lr else 0.05
    run_dir, tensorboard_dir = run_folders(opt.save_dir, source, opt.dataset, opt.trial)
    for folder in (run_dir, tensorboard_dir):
        check_writable(folder)
    if saved_files(run_dir):
        raise UsageError(f"{run_dir} already holds a run of this probe ({', '.join(saved_files(run_dir))}); start "
                         "another with another --trial, or delete that folder to run it again")
    with claim_run_folder(run_dir, resuming=False):
        data = load_dataset(opt.dataset, opt.data_root, opt.num_workers)
        probe = LinearProbe(encoder, data.num_classes, update_bn=opt.bn_stats == "update").to(device)
        logger = RunLogger(run_dir, tensorboard_dir)
        try:
            logger.info(f"run folder: {run_dir}")
            logger.info(f"probing the {source.embedding} embedding ({encoder.embedding_dim} features) of "
                        f"{source.arch} from {opt.path} on {opt.dataset} ({data.num_classes} classes)")
            logger.rewrite([])
            history = _train(probe, data, opt, device, logger)
            target = {"dataset": opt.dataset, "num_classes": data.num_classes, "train_images": len(data.train),
                      "test_images": len(data.test), "embedding_dim": encoder.embedding_dim,
                      "bn_stats": opt.bn_stats}
            summary = transfer_summary(f"{source.run}/{run_dir.name}", history, opt.epochs, source, target,
                                       dict(vars(opt)), time.perf_counter() - start)
            ckpt.save_atomic({"model": probe.head.state_dict(), "epoch": len(history),
                              "accuracy": summary["last_acc"], "source": source.record(), "transfer": target},
                             run_dir / HEAD_FILE)
            logger.summary(summary)
        finally:
            logger.close()
    return summary


def positive_int(text: str) -> int:
    """An argparse type: a positive integer."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer that is not negative."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite positive number."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--path", required=True, help="the checkpoint to probe")
    parser.add_argument("--dataset", default="stl10", choices=sorted(READERS), help="the data set to probe on")
    parser.add_argument("--data_root", default="./data",
                        help="the folder holding stl10_binary/, tiny-imagenet-200/ or the CIFAR folders")
    parser.add_argument("--arch", default=None,
                        help="the network's architecture, for files that record none outside a folder <arch>_...")
    parser.add_argument("--source_dataset", default=None,
                        help="what the network was trained on, for files that do not record it (released teachers)")
    parser.add_argument("--embedding", default="auto", choices=EMBEDDINGS,
                        help="auto: a SimKD student's projector output, any other network's pooled features")
    parser.add_argument("--bn_stats", default="update", choices=BN_STATS,
                        help="update: batch-norm statistics follow the new images (the distillers script); "
                             "frozen: the network runs exactly as saved")
    parser.add_argument("--epochs", type=positive_int, default=120)
    parser.add_argument("--learning_rate", type=positive_float, default=None,
                        help="default 0.05, or 0.01 for MobileNet/ShuffleNet networks")
    parser.add_argument("--lr_decay_epochs", default="30,60,90", help="comma-separated epochs")
    parser.add_argument("--lr_decay_rate", type=positive_float, default=0.1)
    parser.add_argument("--weight_decay", type=finite_float, default=5e-4)
    parser.add_argument("--momentum", type=finite_float, default=0.9)
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--num_workers", type=non_negative_int, default=8,
                        help="threads decoding Tiny-ImageNet's images (0: one)")
    parser.add_argument("--save_dir", default="./save", help="root of everything a run writes")
    parser.add_argument("--trial", default="0", help="experiment id, part of the run folder name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--print_freq", type=positive_int, default=100, help="iterations between log lines")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked; a mistake is a usage error."""
    opt = parser().parse_args(argv)
    opt.lr_decay_epochs = parse_lr_decay_epochs(opt.lr_decay_epochs)
    if opt.weight_decay < 0 or not 0 <= opt.momentum < 1:
        raise UsageError("--weight_decay must be >= 0 and --momentum in [0, 1)")
    return opt


def main(argv: Sequence[str] | None = None) -> int:
    try:
        summary = transfer(parse_args(argv))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLoss as error:
        print(f"error: {error}; the probe stopped", file=sys.stderr)
        return EXIT_NONFINITE
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_WRITE
    print(f"transfer to {summary['transfer']['dataset']}: last-epoch top-1 {summary['last_acc']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
