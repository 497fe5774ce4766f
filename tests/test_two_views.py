"""The "two augmented views per sample" data need (``DataNeeds.strong_view``, MLKD's second view).

Both CIFAR loaders serve a strongly augmented second view: the usual crop and flip drawn anew,
then torchvision's AutoAugment (CIFAR-10 policy). The reference loader applies AutoAugment to
each PIL image; the fast loader applies the same policy to a uint8 batch
(``BatchAutoAugment``). Checked here: for the same draws the batch version equals
torchvision's per-image transform exactly on tensors and within rounding on PIL images; the two
loaders' strong views agree in distribution (and differ clearly from the ordinary view); the
ordinary view is unchanged by asking for the second one; and no method but one that asks gets it.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import dataset
import distiller_zoo
from dataset.arrays import ImageArrays
from dataset.batch import Batch, DataNeeds
from dataset.reference_loader import (
    ArrayImages,
    IndexedDataset,
    ReferenceLoader,
    cifar_strong_transform,
    cifar_train_transform,
)
from dataset.tensor_loader import BatchAutoAugment, PolicyDraws, TensorLoader
from errors import UsageError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def arrays() -> ImageArrays:
    """128 images, each a random colour plus noise (like the generated CIFAR files)."""
    rng = np.random.default_rng(0)
    colours = rng.uniform(40, 215, size=(128, 3, 1, 1))
    images = np.clip(colours + rng.normal(0, 40, size=(128, 3, 32, 32)), 0, 255).astype(np.uint8)
    return ImageArrays(images, rng.integers(0, 10, 128))


def fast_loader(arrays: ImageArrays, strong_view: bool, seed: int = 0) -> TensorLoader:
    return TensorLoader(arrays, mean=MEAN, std=STD, batch_size=64, device="cpu", seed=seed, train=True,
                        strong_view=strong_view)


def reference_loader(arrays: ImageArrays, strong_view: bool) -> ReferenceLoader:
    strong = cifar_strong_transform(MEAN, STD) if strong_view else None
    data = IndexedDataset(ArrayImages(arrays), cifar_train_transform(MEAN, STD), strong_transform=strong)
    return ReferenceLoader(data, batch_size=64, device="cpu", seed=0, train=True, num_workers=0)


def epoch_batches(loader, epoch: int) -> list[Batch]:
    loader.set_epoch(epoch)
    return list(loader)


def draws_of(draws: PolicyDraws, row: int):
    """One image's draws in the form ``AutoAugment.get_params`` returns them."""
    return int(draws.policy_ids[row]), draws.probs[row], draws.signs[row]


def per_image(augment: transforms.AutoAugment, images, draws: PolicyDraws) -> list:
    """torchvision's AutoAugment applied to each image alone, with that image's draws."""
    out = []
    for row, image in enumerate(images):
        fixed = staticmethod(lambda _count, row=row: draws_of(draws, row))
        with mock.patch.object(transforms.AutoAugment, "get_params", fixed):
            out.append(augment(image))
    return out


def test_batch_auto_augment_equals_torchvision_per_image_for_the_same_draws(arrays):
    augment = BatchAutoAugment()
    images = torch.from_numpy(arrays.images[:64])
    draws = augment.draw(64, torch.Generator().manual_seed(3))
    batch = augment.apply(images, draws)
    expected = torch.stack(per_image(augment.reference, images, draws))
    assert torch.equal(batch, expected)
    changed = (batch != images).flatten(1).any(1)
    assert 20 < int(changed.sum()) < 64  # most images drew an operation, some drew none that applied


def test_batch_auto_augment_matches_the_pil_pipeline_within_rounding(arrays):
    augment = BatchAutoAugment()
    images = torch.from_numpy(arrays.images[:32])
    draws = augment.draw(32, torch.Generator().manual_seed(4))
    batch = augment.apply(images, draws)
    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    reference = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1)
                             for image in per_image(augment.reference, pil, draws)])
    difference = (batch.int() - reference.int()).abs().float().mean(dim=(1, 2, 3))
    assert float(difference.max()) < 1.0  # under one grey level per image (PIL and tensor kernels round apart)


def test_policy_draws_have_autoaugments_distribution():
    draws = BatchAutoAugment().draw(20000, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws.policy_ids, minlength=25).float()
    assert counts.shape == (25,) and float(counts.min()) > 700 and float(counts.max()) < 900  # uniform: 800 each
    assert float(draws.probs.min()) >= 0 and float(draws.probs.max()) < 1
    assert abs(float(draws.probs.mean()) - 0.5) < 0.01
    assert set(draws.signs.unique().tolist()) == {0, 1} and abs(float(draws.signs.float().mean()) - 0.5) < 0.01


def view_statistics(batches: list[Batch], strong: bool) -> np.ndarray:
    """Mean, std and the spread of per-image means of all images of one view."""
    images = torch.cat([batch.strong_images if strong else batch.images for batch in batches])
    return np.array([float(images.mean()), float(images.std()), float(images.mean(dim=(1, 2, 3)).std())])


def test_the_two_loaders_strong_views_agree_in_distribution(arrays):
    fast = [b for epoch in range(4) for b in epoch_batches(fast_loader(arrays, True), epoch)]
    ref = [b for epoch in range(4) for b in epoch_batches(reference_loader(arrays, True), epoch)]
    fast_strong, ref_strong = view_statistics(fast, True), view_statistics(ref, True)
    np.testing.assert_allclose(fast_strong, ref_strong, atol=0.06)
    # the statistics see AutoAugment: the ordinary view's per-image means spread far less
    for batches in (fast, ref):
        assert view_statistics(batches, True)[2] - view_statistics(batches, False)[2] > 0.15


@pytest.mark.parametrize("make", [fast_loader, reference_loader], ids=["fast", "torchvision"])
def test_strong_view_leaves_the_ordinary_view_unchanged_and_is_reproducible(make, arrays):
    plain, two = epoch_batches(make(arrays, False), 2), epoch_batches(make(arrays, True), 2)
    again = epoch_batches(make(arrays, True), 2)
    for one, other, repeat in zip(plain, two, again):
        assert one.strong_images is None
        assert torch.equal(one.images, other.images) and torch.equal(one.indices, other.indices)
        assert other.strong_images.shape == other.images.shape and other.strong_images.dtype == torch.float32
        assert not torch.equal(other.strong_images, other.images)
        assert torch.equal(other.strong_images, repeat.strong_images)
    next_epoch = epoch_batches(make(arrays, True), 3)
    assert not torch.equal(next_epoch[0].strong_images, two[0].strong_images)


def test_evaluation_loaders_never_carry_a_strong_view(arrays):
    loader = TensorLoader(arrays, mean=MEAN, std=STD, batch_size=64, device="cpu", seed=0, train=False,
                          strong_view=True)
    assert all(batch.strong_images is None for batch in loader)


def test_batch_moves_the_strong_view_with_the_images():
    batch = Batch(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]), strong_images=torch.randn(2, 3, 4, 4))
    moved = batch.to("cpu", channels_last=True)
    assert moved.strong_images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved.strong_images, batch.strong_images)
    assert Batch(torch.randn(2, 3, 4, 4), torch.tensor([0, 1])).to("cpu").strong_images is None


def test_only_a_method_that_asks_gets_the_second_view():
    assert DataNeeds().strong_view is False
    asking = [name for name in distiller_zoo.DISTILLERS if distiller_zoo.registry.data_needs(name, {}).strong_view]
    assert asking == ["mlkd"]


def test_bundle_serves_the_strong_view_on_the_training_loader_only(cifar100_root):
    for loader in ("fast", "torchvision"):
        bundle = dataset.build("cifar100", cifar100_root, 32, DataNeeds(strong_view=True), "cpu", loader=loader)
        bundle.train.set_epoch(1)
        train = next(iter(bundle.train))
        assert train.strong_images.shape == train.images.shape == (32, 3, 32, 32)
        assert next(iter(bundle.test)).strong_images is None


def test_dali_refuses_the_strong_view_in_one_line(tmp_path):
    with pytest.raises(UsageError, match="--dali cannot serve the second") as error:
        dataset.build("imagenet", tmp_path, 8, DataNeeds(strong_view=True), "cpu", dali="cpu")
    assert "\n" not in str(error.value)


def test_imagenet_strong_view_inserts_the_imagenet_policy_before_to_tensor():
    from dataset.imagenet import imagenet_train_transform
    from dataset.reference_loader import with_auto_augment

    steps = with_auto_augment(imagenet_train_transform(), "IMAGENET").transforms
    kinds = [type(step) for step in steps]
    assert kinds == [transforms.RandomResizedCrop, transforms.RandomHorizontalFlip, transforms.AutoAugment,
                     transforms.ToTensor, transforms.Normalize]
    assert steps[2].policy == transforms.AutoAugmentPolicy.IMAGENET
