"""dataset/: every data set builds from generated files and its loaders keep their promises."""

from __future__ import annotations

import argparse
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import dataset
from dataset import Batch, ContrastSampler, DataNeeds
from dataset.arrays import ImageArrays
from dataset.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from dataset.digits import load_digits_dataset
from dataset.imagenet import imagenet_val_transform
from dataset.reference_loader import ArrayImages, IndexedDataset, ReferenceLoader, cifar_train_transform
from dataset.tensor_loader import TensorLoader, crop_and_flip, normalize
from errors import UsageError
from tests.fakedata import write_cifar10, write_cifar100, write_imagenet

CPU = torch.device("cpu")
LOADERS = ("fast", "torchvision")


def make_opt(data_root: Path, **changes) -> argparse.Namespace:
    settings = {
        "dataset": "cifar100",
        "data_root": str(data_root),
        "batch_size": 64,
        "num_workers": 0,
        "loader": "fast",
        "seed": 0,
        "deterministic": False,
        "val_split": 0.0,
    }
    settings.update(changes)
    return argparse.Namespace(**settings)


def build(opt: argparse.Namespace, needs: DataNeeds, device: torch.device, rank: int = 0,
          world_size: int = 1) -> dataset.DataBundle:
    """``dataset.build`` with its arguments taken from an option namespace, as helper.components does."""
    return dataset.build(opt.dataset, opt.data_root, opt.batch_size, needs, device, seed=opt.seed,
                         num_workers=opt.num_workers, loader=opt.loader, dali=vars(opt).get("dali"),
                         val_split=opt.val_split, rank=rank, world_size=world_size)


def unnormalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Float batch back to uint8 pixels (exact: float32 error is far below half a grey level)."""
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return ((images.cpu() * std_t + mean_t) * 255).round().clamp(0, 255).to(torch.uint8)


def read_official(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N,3,32,32] and labels of one official pickle, read without the code under test."""
    with path.open("rb") as file:
        entry = pickle.load(file, encoding="bytes")
    return torch.from_numpy(entry[b"data"].reshape(-1, 3, 32, 32)), torch.tensor(entry[label_key])


def all_batches(loader, epoch: int = 0) -> list[Batch]:
    loader.set_epoch(epoch)
    return list(loader)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, n_train=500, n_test=100)
    write_cifar10(root, n_train=500, n_test=100)
    return root


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=3, per_class=4)


# --- shapes, lengths, normalisation ------------------------------------------------------------


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name, classes", [("cifar100", 100), ("cifar10", 10)])
def test_cifar_batches_have_the_right_types_shapes_and_lengths(cifar_root, loader, name, classes):
    bundle = build(make_opt(cifar_root, dataset=name, loader=loader), DataNeeds(), CPU)
    assert (bundle.num_classes, bundle.num_train, bundle.image_size, bundle.val) == (classes, 500, 32, None)
    batches = all_batches(bundle.train)
    assert len(bundle.train) == len(batches) == 8
    assert [len(batch) for batch in batches] == [64] * 7 + [52]  # the last partial batch is kept
    first = batches[0]
    assert isinstance(first, Batch) and first.contrast_indices is None
    assert first.images.shape == (64, 3, 32, 32) and first.images.dtype == torch.float32
    assert first.targets.dtype == torch.int64 and first.indices.dtype == torch.int64
    indices = torch.cat([batch.indices for batch in batches])
    assert torch.equal(indices.sort().values, torch.arange(500))  # one epoch visits every sample once
    targets = torch.cat([batch.targets for batch in batches])
    assert torch.equal(targets, bundle.train_targets[indices])
    assert bundle.train_targets.dtype == torch.int64 and bundle.train_targets.shape == (500,)
    assert set(bundle.train_targets.tolist()) == set(range(classes))
    test = all_batches(bundle.test)
    assert len(bundle.test) == len(test) == 2 and [len(batch) for batch in test] == [64, 36]


@pytest.mark.parametrize("loader", LOADERS)
def test_drop_last_drops_the_partial_batch(cifar_root, loader):
    bundle = build(make_opt(cifar_root, loader=loader), DataNeeds(drop_last=True), CPU)
    batches = all_batches(bundle.train)
    assert len(bundle.train) == len(batches) == 7 and all(len(batch) == 64 for batch in batches)
    assert len(bundle.test) == 2  # evaluation keeps every sample


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    "name, folder, file, key, mean, std",
    [
        ("cifar100", "cifar-100-python", "test", b"fine_labels", CIFAR100_MEAN, CIFAR100_STD),
        ("cifar10", "cifar-10-batches-py", "test_batch", b"labels", CIFAR10_MEAN, CIFAR10_STD),
    ],
)
def test_test_images_are_the_stored_images_normalised(cifar_root, loader, name, folder, file, key, mean, std):
    stored, labels = read_official(cifar_root / folder / file, key)
    bundle = build(make_opt(cifar_root, dataset=name, loader=loader, batch_size=32), DataNeeds(), CPU)
    for batch in all_batches(bundle.test):
        assert torch.equal(unnormalize(batch.images, mean, std), stored[batch.indices])
        assert torch.equal(batch.targets, labels[batch.indices])
    scaled = stored.float() / 255
    expected = (scaled - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    first = next(iter(bundle.test))
    torch.testing.assert_close(first.images, expected[:32], rtol=0, atol=1e-5)


def matches_some_crop(image: torch.Tensor, stored: torch.Tensor, flips_allowed: bool = True) -> bool:
    """Whether uint8 ``image`` is a 4-padded crop of ``stored`` (mirrored or not, if allowed)."""
    offsets = torch.arange(9)
    oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")
    oy, ox = oy.flatten(), ox.flatten()
    copies = stored.expand(81, -1, -1, -1)
    flip_choices = (False, True) if flips_allowed else (False,)
    candidates = [crop_and_flip(copies, oy, ox, torch.full((81,), flip)) for flip in flip_choices]
    return any((torch.cat(candidates) == image).flatten(1).all(1).tolist())


@pytest.mark.parametrize("loader", LOADERS)
def test_training_images_are_crops_of_the_images_at_their_indices(cifar_root, loader):
    stored, _ = read_official(cifar_root / "cifar-100-python" / "train", b"fine_labels")
    bundle = build(make_opt(cifar_root, loader=loader, batch_size=16), DataNeeds(), CPU)
    bundle.train.set_epoch(3)
    batch = next(iter(bundle.train))
    pixels = unnormalize(batch.images, CIFAR100_MEAN, CIFAR100_STD)
    for image, index in zip(pixels, batch.indices.tolist()):
        assert matches_some_crop(image, stored[index : index + 1])


@pytest.mark.parametrize("loader", LOADERS)
def test_digits_builds_without_files_and_never_flips(tmp_path, loader):
    bundle = build(make_opt(tmp_path / "absent", dataset="digits", loader=loader), DataNeeds(), CPU)
    assert (bundle.num_classes, bundle.num_train, bundle.image_size) == (10, 1437, 32)
    test = all_batches(bundle.test)
    assert sum(len(batch) for batch in test) == 360 and len(bundle.test) == 6
    assert torch.bincount(bundle.train_targets).min() >= 135  # stratified: every digit is there
    # The split is fixed, whatever --seed says.
    other = build(make_opt(tmp_path, dataset="digits", loader=loader, seed=7), DataNeeds(), CPU)
    assert torch.equal(next(iter(other.test)).images, test[0].images)
    # Normalised with the training split's own statistics: mean 0, std 1 per channel.
    digits = load_digits_dataset()
    data = torch.from_numpy(digits.train.images)
    mean, std = torch.tensor(digits.mean), torch.tensor(digits.std)
    normalised = normalize(data, mean, std)
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-4)
    torch.testing.assert_close(normalised.std(dim=(0, 2, 3)), torch.ones(3), rtol=0, atol=1e-3)
    assert data.shape == (1437, 3, 32, 32) and data.dtype == torch.uint8 and int(data.max()) == 255
    batch = next(iter(bundle.train))
    pixels = unnormalize(batch.images[:16], digits.mean, digits.std)
    for image, index in zip(pixels, batch.indices[:16].tolist()):
        assert matches_some_crop(image, data[index : index + 1], flips_allowed=False)


@pytest.mark.parametrize("nested", [False, True])
def test_imagenet_builds_from_class_folders(tmp_path, nested):
    root = tmp_path / "data"
    write_imagenet(root / "imagenet" if nested else root, num_classes=3, per_class=4, size=(40, 48))
    bundle = build(make_opt(root, dataset="imagenet", batch_size=5), DataNeeds(contrast_k=4), CPU)
    assert (bundle.num_classes, bundle.num_train, bundle.image_size) == (3, 12, 224)
    assert bundle.train_targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    batches = all_batches(bundle.train)
    assert len(bundle.train) == len(batches) == 3 and [len(batch) for batch in batches] == [5, 5, 2]
    assert batches[0].images.shape == (5, 3, 224, 224) and batches[0].images.dtype == torch.float32
    assert batches[0].contrast_indices.shape == (5, 5)
    test = all_batches(bundle.test)
    assert len(bundle.test) == len(test) == 3
    first_file = sorted((root / ("imagenet/val" if nested else "val") / "n00000000").iterdir())[0]
    expected = imagenet_val_transform()(Image.open(first_file).convert("RGB"))
    assert torch.equal(test[0].images[0], expected)
    split = build(make_opt(root, dataset="imagenet", batch_size=5, val_split=0.25), DataNeeds(), CPU)
    assert split.num_train == 9 and torch.equal(torch.bincount(split.train_targets), torch.tensor([3, 3, 3]))
    held_out = all_batches(split.val)
    assert [len(batch) for batch in held_out] == [3] and sorted(held_out[0].targets.tolist()) == [0, 1, 2]


# --- user mistakes ------------------------------------------------------------------------------


def expect_usage_error(opt: argparse.Namespace, *fragments: str, needs: DataNeeds | None = None) -> None:
    with pytest.raises(UsageError) as caught:
        build(opt, needs or DataNeeds(), CPU)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_folders_name_the_expected_layout(tmp_path):
    expect_usage_error(make_opt(tmp_path), "<data_root>/cifar-100-python/{train,test,meta}", str(tmp_path))
    expect_usage_error(make_opt(tmp_path, dataset="cifar10"), "<data_root>/cifar-10-batches-py/")
    expect_usage_error(make_opt(tmp_path, dataset="imagenet"), "<data_root>/train/<class>/<image>")


def test_a_folder_in_the_wrong_layout_names_the_expected_layout(tmp_path):
    write_cifar100(tmp_path, n_train=100, n_test=10)
    (tmp_path / "cifar-100-python" / "test").rename(tmp_path / "cifar-100-python" / "test_batch")
    expect_usage_error(make_opt(tmp_path), "missing test", "cifar-100-python/{train,test,meta}")
    for wnid in ("n1", "n2"):
        (tmp_path / "net" / "train" / wnid).mkdir(parents=True)
        (tmp_path / "net" / "val" / wnid).mkdir(parents=True)
    empty_imagenet = make_opt(tmp_path / "net", dataset="imagenet")
    expect_usage_error(empty_imagenet, "no ImageNet images", "<class>/<image>")


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a pickle",
        pickle.dumps({b"data": np.zeros((4, 10), np.uint8), b"fine_labels": [0, 1, 2, 3]}, protocol=2),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, protocol=2),
        pickle.dumps(["not", "a", "dict"]),
        pickle.dumps(print),  # any global beyond NumPy's array rebuilding is refused
    ],
)
def test_a_corrupted_pickle_is_a_usage_error(tmp_path, content):
    write_cifar100(tmp_path, n_train=100, n_test=10)
    (tmp_path / "cifar-100-python" / "train").write_bytes(content)
    expect_usage_error(make_opt(tmp_path), "cifar-100-python/train", "cifar-100-python/{train,test,meta}")


def test_values_that_do_not_fit_the_data_are_usage_errors(cifar_root):
    expect_usage_error(make_opt(cifar_root, batch_size=600), "--batch_size", needs=DataNeeds(drop_last=True))
    expect_usage_error(make_opt(cifar_root), "--mode", needs=DataNeeds(contrast_k=4, contrast_mode="soft"))


# --- reproducibility, sharding, validation split -----------------------------------------------


def assert_same_batches(first: list[Batch], second: list[Batch]) -> None:
    assert len(first) == len(second)
    for one, other in zip(first, second):
        for name in ("images", "targets", "indices", "contrast_indices"):
            mine, theirs = getattr(one, name), getattr(other, name)
            assert (mine is None and theirs is None) or torch.equal(mine, theirs), name


@pytest.mark.parametrize("loader", LOADERS)
def test_an_epoch_depends_only_on_seed_and_epoch(cifar_root, loader):
    opt = make_opt(cifar_root, loader=loader, batch_size=100)
    needs = DataNeeds(contrast_k=6, contrast_mode="relax")
    uninterrupted = build(opt, needs, CPU)
    epoch_0 = all_batches(uninterrupted.train, 0)
    epoch_1 = all_batches(uninterrupted.train, 1)
    resumed = build(opt, needs, CPU)  # a run resumed at the start of epoch 1
    assert_same_batches(all_batches(resumed.train, 1), epoch_1)
    assert not torch.equal(epoch_0[0].indices, epoch_1[0].indices)
    assert not torch.equal(epoch_0[0].images, epoch_1[0].images)
    assert not torch.equal(all_batches(resumed.train, -1)[0].indices, epoch_1[0].indices)  # pre-training stages
    other_seed = build(make_opt(cifar_root, loader=loader, batch_size=100, seed=1), needs, CPU)
    assert not torch.equal(all_batches(other_seed.train, 1)[0].indices, epoch_1[0].indices)


def test_fast_and_reference_loaders_visit_the_same_samples(cifar_root):
    fast = build(make_opt(cifar_root), DataNeeds(), CPU)
    reference = build(make_opt(cifar_root, loader="torchvision"), DataNeeds(), CPU)
    for one, other in zip(all_batches(fast.train, 2), all_batches(reference.train, 2)):
        assert torch.equal(one.indices, other.indices) and torch.equal(one.targets, other.targets)
    for one, other in zip(all_batches(fast.test), all_batches(reference.test)):
        assert torch.equal(one.images, other.images)


def test_reference_augmentation_does_not_depend_on_the_number_of_workers(tmp_path):
    write_cifar100(tmp_path, n_train=120, n_test=10)
    needs = DataNeeds(contrast_k=5)
    in_process = build(make_opt(tmp_path, loader="torchvision", batch_size=40), needs, CPU)
    with_workers = build(make_opt(tmp_path, loader="torchvision", batch_size=40, num_workers=2), needs, CPU)
    for epoch in (0, 1):  # persistent workers must follow set_epoch too
        assert_same_batches(all_batches(with_workers.train, epoch), all_batches(in_process.train, epoch))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("n_train", [500, 501])
def test_ranks_get_disjoint_equal_shards(tmp_path, n_train, loader):
    write_cifar100(tmp_path, n_train=n_train, n_test=99)
    shards = [build(make_opt(tmp_path, batch_size=64, loader=loader), DataNeeds(), CPU, rank=rank, world_size=2)
              for rank in (0, 1)]
    train = [torch.cat([batch.indices for batch in all_batches(bundle.train, 4)]) for bundle in shards]
    share = (n_train + 1) // 2
    assert len(shards[0].train) == len(shards[1].train) == 4 and len(train[0]) == len(train[1]) == share
    assert set(train[0].tolist()) | set(train[1].tolist()) == set(range(n_train))
    overlap = set(train[0].tolist()) & set(train[1].tolist())
    assert len(overlap) == 2 * share - n_train  # only the wrap-around padding repeats a sample
    test = [torch.cat([batch.indices for batch in all_batches(bundle.test)]) for bundle in shards]
    assert sorted(torch.cat(test).tolist()) == list(range(99))  # unpadded: exact metrics


@pytest.mark.parametrize("loader", LOADERS)
def test_val_split_holds_out_a_stratified_part_of_the_training_set(cifar_root, loader):
    stored, labels = read_official(cifar_root / "cifar-100-python" / "train", b"fine_labels")
    plain = build(make_opt(cifar_root, loader=loader), DataNeeds(), CPU)
    split = build(make_opt(cifar_root, loader=loader, val_split=0.2), DataNeeds(contrast_k=3), CPU)
    assert split.num_train == 400 and split.train_targets.shape == (400,)
    assert torch.equal(torch.bincount(split.train_targets), torch.full((100,), 4))
    val = all_batches(split.val)
    val_pixels = torch.cat([unnormalize(batch.images, CIFAR100_MEAN, CIFAR100_STD) for batch in val])
    val_targets = torch.cat([batch.targets for batch in val])
    assert torch.equal(torch.cat([batch.indices for batch in val]), torch.arange(100))
    # Every held-out image is a stored training image, seen unaugmented, and never trained on.
    stored_rows = {image.numpy().tobytes(): position for position, image in enumerate(stored)}
    held = [stored_rows[image.numpy().tobytes()] for image in val_pixels]
    assert torch.equal(labels[held], val_targets)
    kept = sorted(set(range(500)) - set(held))
    assert torch.equal(split.train_targets, labels[kept])
    for batch in all_batches(split.train):
        assert int(batch.indices.max()) < 400 and int(batch.contrast_indices.max()) < 400
        assert torch.equal(batch.targets, split.train_targets[batch.indices])
    assert_same_batches(all_batches(split.test), all_batches(plain.test))
    again = build(make_opt(cifar_root, loader=loader, val_split=0.2), DataNeeds(), CPU)
    assert torch.equal(again.train_targets, split.train_targets)  # the split is fixed for a run


# --- fast loader against the torchvision reference ---------------------------------------------


def coded_image() -> np.ndarray:
    """A uint8 [3,32,32] image whose red value encodes the row and green the column (never 0)."""
    code = 1 + 7 * np.arange(32)
    image = np.full((3, 32, 32), 128, dtype=np.uint8)
    image[0] = code[:, None]
    image[1] = code[None, :]
    return image


def decode_crop_flip(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recover (offset_y, offset_x, flipped) from augmented copies of ``coded_image``.

    Output pixel (16, c) comes from source row offset_y + 12 and column offset_x + c − 4, or
    offset_x + 27 − c when mirrored; both centre pixels lie inside the image for any offset.
    """
    pixels = pixels.long()
    offsets_y = (pixels[:, 0, 16, 16] - 1) // 7 - 12
    flipped = pixels[:, 1, 16, 16] < pixels[:, 1, 16, 15]
    offsets_x = (pixels[:, 1, 16, 16] - 1) // 7 - torch.where(flipped, 11, 12)
    return offsets_y, offsets_x, flipped


def assert_uniform_crops_and_fair_flips(pixels: torch.Tensor, flip: bool) -> None:
    offsets_y, offsets_x, flipped = decode_crop_flip(pixels)
    counts = torch.bincount(offsets_y * 9 + offsets_x, minlength=81).double()
    assert len(counts) == 81 and int(offsets_y.min()) == 0 and int(offsets_x.max()) == 8
    expected = len(pixels) / 81
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 140, chi_square  # 80 degrees of freedom: mean 80, sd 12.6
    rate = flipped.double().mean().item()
    if flip:
        assert abs(rate - 0.5) < 0.04, rate  # sd 0.009
    else:
        assert rate == 0.0


@pytest.mark.parametrize("flip", [True, False])
def test_both_loaders_draw_uniform_crops_and_fair_flips(flip):
    draws = 81 * 40
    arrays = ImageArrays(np.repeat(coded_image()[None], draws, axis=0), np.arange(draws) % 2)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    settings = {"batch_size": 810, "device": CPU, "seed": 3, "train": True}
    fast = TensorLoader(arrays, mean=mean, std=std, flip=flip, **settings)
    reference = ReferenceLoader(
        IndexedDataset(ArrayImages(arrays), cifar_train_transform(mean, std, flip)), num_workers=0, **settings
    )
    for loader in (fast, reference):
        pixels = torch.cat([unnormalize(batch.images, mean, std) for batch in all_batches(loader, 1)])
        assert_uniform_crops_and_fair_flips(pixels, flip)


def test_same_crop_and_flip_give_identical_tensors_on_both_paths():
    image = np.random.default_rng(5).integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
    reference = cifar_train_transform(CIFAR100_MEAN, CIFAR100_STD)
    to_tensor, normalise = reference.transforms[-2:]
    pil = Image.fromarray(image.transpose(1, 2, 0))
    mean, std = torch.tensor(CIFAR100_MEAN), torch.tensor(CIFAR100_STD)
    for offset_y in range(9):
        for offset_x in range(9):
            for flip in (False, True):
                cropped = TF.crop(TF.pad(pil, 4), offset_y, offset_x, 32, 32)
                expected = normalise(to_tensor(TF.hflip(cropped) if flip else cropped))
                fast = normalize(
                    crop_and_flip(
                        torch.from_numpy(image)[None],
                        torch.tensor([offset_y]),
                        torch.tensor([offset_x]),
                        torch.tensor([flip]),
                    ),
                    mean,
                    std,
                )[0]
                assert torch.equal(fast, expected), (offset_y, offset_x, flip)


# --- contrastive sampling -----------------------------------------------------------------------


def sampler_for(counts: list[int], k: int, mode: str = "exact") -> tuple[ContrastSampler, torch.Tensor]:
    targets = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    targets = targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))]
    return ContrastSampler(targets, k, mode, CPU), targets


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_contrast_rows_have_the_right_positive_and_distinct_other_class_negatives(mode):
    sampler, targets = sampler_for([10, 20, 30, 1], k=12, mode=mode)
    generator = torch.Generator().manual_seed(1)
    indices = torch.arange(len(targets))
    relaxed_differs = False
    for _ in range(50):
        rows = sampler.sample(indices, generator)
        assert rows.shape == (61, 13) and rows.dtype == torch.int64
        assert torch.equal(targets[rows[:, 0]], targets)
        if mode == "exact":
            assert torch.equal(rows[:, 0], indices)
        relaxed_differs |= bool((rows[:, 0] != indices).any())
        negatives = rows[:, 1:]
        assert (targets[negatives] != targets.unsqueeze(1)).all()
        assert all(len(set(row)) == 12 for row in negatives.tolist())
    assert relaxed_differs == (mode == "relax")


def test_contrast_negatives_are_uniform_over_the_pool():
    counts, k = [10, 20, 30], 7
    sampler, targets = sampler_for(counts, k=k, mode="relax")
    generator = torch.Generator().manual_seed(2)
    indices = torch.arange(len(targets))
    hits = torch.zeros(3, len(targets))
    positive_hits = torch.zeros(len(targets))
    rounds = 600
    for _ in range(rounds):
        rows = sampler.sample(indices, generator)
        for label in range(3):
            anchors = targets == label
            hits[label] += torch.bincount(rows[anchors, 1:].flatten(), minlength=len(targets))
        positive_hits += torch.bincount(rows[:, 0], minlength=len(targets))
    for label, count in enumerate(counts):
        pool = targets != label
        assert hits[label][~pool].sum() == 0
        expected = rounds * count * k / int(pool.sum())
        chi_square = float(((hits[label][pool] - expected) ** 2 / expected).sum())
        assert chi_square < 2 * int(pool.sum()) + 30, (label, chi_square)
        # relax positives: uniform over the anchor's own class
        expected_positive = rounds
        observed = positive_hits[targets == label]
        assert float(((observed - expected_positive) ** 2 / expected_positive).sum()) < 2 * count + 30


def test_contrast_falls_back_to_replacement_with_one_warning():
    with pytest.warns(UserWarning, match="with replacement") as caught:
        sampler, targets = sampler_for([3, 40], k=10)
    assert len(caught) == 1
    generator = torch.Generator().manual_seed(3)
    indices = torch.arange(len(targets))
    hits = torch.zeros(len(targets))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(200):
            rows = sampler.sample(indices, generator)
            negatives = rows[:, 1:]
            assert (targets[negatives] != targets.unsqueeze(1)).all()
            # class 0 still has 40 negatives for K = 10: distinct
            assert all(len(set(row)) == 10 for row in negatives[targets == 0].tolist())
            hits += torch.bincount(negatives[targets == 1].flatten(), minlength=len(targets))
    small_pool = hits[targets == 0]  # class 1 rows draw from class 0's three samples
    assert hits[targets == 1].sum() == 0
    assert float(small_pool.min()) > 0.9 * float(small_pool.mean())


@pytest.mark.parametrize("loader", LOADERS)
def test_loaders_fill_contrast_indices_for_training_only(cifar_root, loader):
    bundle = build(make_opt(cifar_root, loader=loader), DataNeeds(contrast_k=16), CPU)
    batch = next(iter(bundle.train))
    assert batch.contrast_indices.shape == (64, 17)
    assert torch.equal(batch.contrast_indices[:, 0], batch.indices)
    negatives = batch.contrast_indices[:, 1:]
    assert (bundle.train_targets[negatives] != batch.targets.unsqueeze(1)).all()
    assert next(iter(bundle.test)).contrast_indices is None
