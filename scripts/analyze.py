"""A student beside its teacher: t-SNE of their embeddings and the difference of their class correlations.

    python scripts/analyze.py --path_s S.pth --path_t T.pth --dataset cifar100 --data_root data --out DIR

Both networks are run (in eval mode) over the test set of ``--dataset`` (default: the one the
student was trained on), and four files are written to ``--out`` (default: an ``analysis``
folder beside the student's checkpoint):

* ``tsne.png`` / ``tsne.json``: a two-dimensional t-SNE (scikit-learn's ``TSNE``, PCA
  initialisation) of the student's and of the teacher's embeddings, side by side, one colour per
  class. As the papers' figures do, a data set with many classes is shown through a subset
  (``--tsne_classes``, default the first 10) and at most ``--tsne_per_class`` images of each.
  The embedding is what ``scripts/transfer.py`` probes: the pooled last feature, or a SimKD
  student's projector output. The JSON holds every point's coordinates, label and test-set index.
* ``correlation.png`` / ``correlation.json``: the heat map of ``|M_t − M_s|``, where ``M[i, j]``
  is the mean, over the test images of class ``i``, of logit ``j`` after each image's logits are
  standardised (zero mean, unit variance across classes). This is the inter-class correlation
  picture of the CRD paper (Fig. 3) as the distillers and mdistiller notebooks compute it; the
  diagonal, which holds each class's own score, is left out (drawn as 0) and the title gives the
  mean over the off-diagonal entries. The colour scale is fixed (``--vmax``, default 3 as in
  those notebooks) so that the maps of different students compare at a glance. The JSON holds
  both matrices, their difference and its mean. A network compared with itself gives 0 exactly.

Exit status: 0 done, 2 a usage mistake (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dataset.arrays import InMemoryDataset
from dataset.tensor_loader import TensorLoader
from errors import UsageError
from helper.cli import EXIT_USAGE
from helper.driver import select_device
from helper.run_folder import check_writable
from scripts.transfer import (
    READERS,
    EmbeddingNet,
    Source,
    load_dataset,
    load_network,
    non_negative_int,
    positive_float,
    positive_int,
)

TSNE_FILE, CORRELATION_FILE = "tsne", "correlation"  # stems of the .png/.json pairs written
DEFAULT_VMAX = 3.0


@dataclass(frozen=True)
class Outputs:
    """One network's outputs over the test set, in test-set order."""

    embeddings: np.ndarray  # [N, d]
    logits: np.ndarray  # [N, C]

    def accuracy(self, labels: np.ndarray) -> float:
        return float(100.0 * np.mean(self.logits.argmax(1) == labels))


@torch.no_grad()
def run_network(network: EmbeddingNet, loader: TensorLoader, device: torch.device) -> Outputs:
    """Embeddings and logits of ``network`` for every image of ``loader`` (in eval mode)."""
    network = network.to(device).eval()
    embeddings, logits = [], []
    for batch in loader:
        embedding = network.embed(batch.images.to(device))
        embeddings.append(embedding.float().cpu())
        logits.append(network.classifier(embedding).float().cpu())
    return Outputs(torch.cat(embeddings).numpy(), torch.cat(logits).numpy())


# ---------------------------------------------------------------------------------------------
# Class correlations of the logits.


def standardise(logits: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its (sample) standard deviation: scales of networks compare."""
    centred = logits - logits.mean(axis=1, keepdims=True)
    return centred / logits.std(axis=1, ddof=1, keepdims=True)


def class_correlation(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``M[i, j]``: the mean standardised logit ``j`` over the images of class ``i`` (a class absent: 0)."""
    matrix = np.zeros((num_classes, num_classes))
    counts = np.bincount(labels, minlength=num_classes)
    np.add.at(matrix, labels, standardise(logits.astype(np.float64)))
    return matrix / np.maximum(counts, 1)[:, None]


def correlation_difference(teacher: np.ndarray, student: np.ndarray) -> tuple[np.ndarray, float]:
    """``|teacher − student|`` with a zero diagonal, and the mean of its off-diagonal entries."""
    difference = np.abs(teacher - student)
    np.fill_diagonal(difference, 0.0)
    count = difference.size - len(difference)
    return difference, float(difference.sum() / count) if count else 0.0


def plot_correlation(difference: np.ndarray, mean: float, vmax: float, title: str) -> Figure:
    """The heat map of the difference, its colour bar labelled, the mean in the title."""
    figure = Figure(figsize=(7.2, 6))
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    image = axis.imshow(difference, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    axis.set_xlabel("logit of class j")
    axis.set_ylabel("true class i")
    axis.set_title(f"{title}\nmean |teacher − student| = {mean:.4f} (off-diagonal)", fontsize="medium")
    colourbar = figure.colorbar(image, ax=axis)
    colourbar.set_label("|M_teacher − M_student| (class-mean standardised logits)")
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------
# t-SNE.


def tsne_subset(labels: np.ndarray, classes: int, per_class: int, seed: int) -> np.ndarray:
    """Test-set positions of at most ``per_class`` images of each of the first ``classes`` classes, sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(classes):
        positions = np.flatnonzero(labels == label)
        if len(positions) > per_class:
            positions = rng.choice(positions, size=per_class, replace=False)
        chosen.append(positions)
    return np.sort(np.concatenate(chosen))


def tsne_2d(embeddings: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """``[N, 2]`` t-SNE coordinates; the perplexity is capped below the number of points, as t-SNE needs."""
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(1.0, (len(embeddings) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(embeddings.astype(np.float32))


def plot_tsne(panels: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, title: str) -> Figure:
    """Side-by-side scatter plots of ``(name, coordinates)`` panels, one colour per class, one legend."""
    figure = Figure(figsize=(6.2 * len(panels) + 1.6, 6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    classes = np.unique(labels)
    colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for axis, (name, points) in zip(axes, panels):
        for index, label in enumerate(classes):
            mine = labels == label
            axis.scatter(points[mine, 0], points[mine, 1], s=9, alpha=0.75, color=colours(index % colours.N),
                         label=f"class {label}")
        axis.set_title(name, fontsize="medium")
        axis.set_xlabel("t-SNE dimension 1")
        axis.set_ylabel("t-SNE dimension 2")
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", markerscale=2)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------


def write_figure(out: Path, stem: str, figure: Figure, record: dict[str, Any]) -> list[Path]:
    """``<stem>.png`` and, beside it, the numbers behind it as ``<stem>.json``; the two paths."""
    png, data = out / f"{stem}.png", out / f"{stem}.json"
    figure.savefig(png, dpi=110, bbox_inches="tight")
    data.write_text(json.dumps(record) + "\n")
    return [png, data]


def _network_record(source: Source, outputs: Outputs, labels: np.ndarray) -> dict[str, Any]:
    return {**source.record(), "test_acc": outputs.accuracy(labels)}


def _label(role: str, source: Source, outputs: Outputs, labels: np.ndarray) -> str:
    return f"{role}: {source.arch} ({source.embedding}), test top-1 {outputs.accuracy(labels):.2f}%"


def _dataset_of(opt: argparse.Namespace, student: Source, teacher: Source) -> str:
    """The data set to analyse on: ``--dataset``, else the student's; both networks must know its classes."""
    dataset = opt.dataset or student.dataset
    if dataset is None:
        raise UsageError(f"{opt.path_s} does not record its data set; pass --dataset")
    for flag, source in (("--path_s", student), ("--path_t", teacher)):
        if source.dataset is not None and source.dataset != dataset:
            raise UsageError(f"{flag} {source.path} was trained on {source.dataset}, not on {dataset}: the class "
                             f"correlations need the classes it was trained for; pass --dataset {source.dataset}")
    return dataset


def analyze(opt: argparse.Namespace) -> list[Path]:
    """Write the t-SNE and correlation files of :mod:`this script <scripts.analyze>`; the paths written."""
    device = select_device(opt.device)
    student, student_source = load_network(opt.path_s, opt.arch_s)
    teacher, teacher_source = load_network(opt.path_t, opt.arch_t)
    dataset = _dataset_of(opt, student_source, teacher_source)
    out = Path(opt.out) if opt.out else Path(opt.path_s).parent / "analysis"
    check_writable(out)
    data: InMemoryDataset = load_dataset(dataset, opt.data_root, opt.num_workers)
    for flag, source in (("--path_s", student_source), ("--path_t", teacher_source)):
        if source.num_classes != data.num_classes:
            raise UsageError(f"{flag} {source.path} predicts {source.num_classes} classes but {dataset} has "
                             f"{data.num_classes}; pass networks trained on {dataset}")
    loader = TensorLoader(data.test, mean=data.mean, std=data.std, batch_size=opt.batch_size, device=device,
                          seed=opt.seed, train=False)
    labels = data.test.targets
    outputs = {"student": run_network(student, loader, device), "teacher": run_network(teacher, loader, device)}
    names = {"student": _label("student", student_source, outputs["student"], labels),
             "teacher": _label("teacher", teacher_source, outputs["teacher"], labels)}
    networks = {"student": _network_record(student_source, outputs["student"], labels),
                "teacher": _network_record(teacher_source, outputs["teacher"], labels), "dataset": dataset}
    out.mkdir(parents=True, exist_ok=True)
    return [*_write_tsne(opt, out, outputs, names, networks, labels, data.num_classes),
            *_write_correlation(opt, out, outputs, names, networks, labels, data.num_classes)]


def _write_tsne(opt: argparse.Namespace, out: Path, outputs: dict[str, Outputs], names: dict[str, str],
                networks: dict[str, Any], labels: np.ndarray, num_classes: int) -> list[Path]:
    classes = min(opt.tsne_classes, num_classes)
    subset = tsne_subset(labels, classes, opt.tsne_per_class, opt.seed)
    coordinates = {role: tsne_2d(outputs[role].embeddings[subset], opt.perplexity, opt.seed) for role in outputs}
    shown = f"{classes} of {num_classes} classes" if classes < num_classes else f"all {num_classes} classes"
    figure = plot_tsne([(names[role], coordinates[role]) for role in ("student", "teacher")], labels[subset],
                       f"t-SNE of test-set embeddings ({networks['dataset']}, {shown}, {len(subset)} images)")
    record = {"kind": "tsne", **networks, "classes": list(range(classes)), "indices": subset.tolist(),
              "labels": labels[subset].tolist(), "perplexity": opt.perplexity, "seed": opt.seed,
              **{f"{role}_points": coordinates[role].tolist() for role in coordinates}}
    return write_figure(out, TSNE_FILE, figure, record)


def _write_correlation(opt: argparse.Namespace, out: Path, outputs: dict[str, Outputs], names: dict[str, str],
                       networks: dict[str, Any], labels: np.ndarray, num_classes: int) -> list[Path]:
    matrices = {role: class_correlation(outputs[role].logits, labels, num_classes) for role in outputs}
    difference, mean = correlation_difference(matrices["teacher"], matrices["student"])
    title = f"{networks['dataset']}: {names['student']}\nvs {names['teacher']}"
    figure = plot_correlation(difference, mean, opt.vmax, title)
    record = {"kind": "correlation", **networks, "mean_abs_difference": mean,
              "max_abs_difference": float(difference.max()), "vmax": opt.vmax,
              "teacher_matrix": matrices["teacher"].tolist(), "student_matrix": matrices["student"].tolist(),
              "difference": difference.tolist()}
    return write_figure(out, CORRELATION_FILE, figure, record)


def parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--path_s", required=True, help="the student checkpoint")
    parser.add_argument("--path_t", required=True, help="the teacher checkpoint")
    parser.add_argument("--dataset", default=None, choices=sorted(READERS),
                        help="whose test set to use (default: the one the student records)")
    parser.add_argument("--data_root", default="./data")
    parser.add_argument("--out", default=None, help="folder for the files (default: analysis/ beside --path_s)")
    parser.add_argument("--arch_s", default=None, help="the student's architecture, for files that record none")
    parser.add_argument("--arch_t", default=None, help="the teacher's architecture, for files that record none")
    parser.add_argument("--tsne_classes", type=positive_int, default=10, help="classes shown in the t-SNE (the first)")
    parser.add_argument("--tsne_per_class", type=positive_int, default=100, help="images per class in the t-SNE")
    parser.add_argument("--perplexity", type=positive_float, default=30.0)
    parser.add_argument("--vmax", type=positive_float, default=DEFAULT_VMAX,
                        help="top of the heat map's colour scale (fixed, so that maps compare)")
    parser.add_argument("--batch_size", type=positive_int, default=256)
    parser.add_argument("--num_workers", type=non_negative_int, default=8,
                        help="threads decoding Tiny-ImageNet's images (0: one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        written = analyze(parser().parse_args(argv))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
