"""The method registry and the public names a ported script imports."""

from __future__ import annotations

import pytest

import distiller_zoo
from distiller_zoo.registry import all_arguments
from helper.errors import UsageError

CLI_METHODS = ("kd hint attention similarity correlation vid crd kdsvd fsp rkd pkt abound factor nst srrl semckd "
               "simkd rrd dcd itrd dkd").split()
CLI_ALIASES = {"fitnet": "hint", "at": "attention", "sp": "similarity", "cc": "correlation", "ab": "abound",
               "ft": "factor"}
UPSTREAM_NAMES = ("DistillKL HintLoss Attention Similarity Correlation VIDLoss RKDLoss PKT ABLoss FactorTransfer "
                  "FSP NSTLoss KDSVD CRDLoss RRDLoss DCDLoss ITLoss SemCKDLoss DKDLoss ConvReg Embed LinearEmbed "
                  "Connector Paraphraser Translator SelfA SRRL SimKD").split()


def test_every_method_of_the_cli_contract_is_registered():
    assert sorted(distiller_zoo.DISTILLERS) == sorted(CLI_METHODS)
    for alias, name in CLI_ALIASES.items():
        assert distiller_zoo.canonical_name(alias) == name


@pytest.mark.parametrize("name", UPSTREAM_NAMES)
def test_upstream_class_names_import_from_distiller_zoo(name):
    assert isinstance(getattr(distiller_zoo, name), type)


def test_unknown_method_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown method"):
        distiller_zoo.canonical_name("telepathy")


def test_method_flags_are_declared_once_and_consistently():
    destinations = [arg.dest for arg in all_arguments()]
    assert len(destinations) == len(set(destinations))
    assert {"nce_k", "feat_dim", "nce_t_s", "nce_t_t", "lambda_corr", "factor", "soft", "hint_layer"} <= set(
        destinations)


@pytest.mark.parametrize("method", sorted(distiller_zoo.DISTILLERS))
def test_cls_and_kd_terms_keep_the_weights_given_on_the_command_line(method):
    """-r weighs cross-entropy and -a the KD term, for every method; no method term may shadow them."""
    from models import model_dict
    from tests.conftest import make_opt

    opt = make_opt(distill=method, gamma=0.2, alpha=0.3, beta=0.7, model_s="resnet8", model_t="resnet8",
                   init_epochs=1)
    distiller = distiller_zoo.build(opt, model_dict["resnet8"](num_classes=10), model_dict["resnet8"](num_classes=10))
    assert distiller.loss_weights["cls"] == 0.2
    assert distiller.loss_weights["kd"] == 0.3
    assert set(distiller.loss_weights) - {"cls", "kd"} == set(distiller.method_weights(opt))


@pytest.mark.parametrize("method", sorted(distiller_zoo.DISTILLERS))
def test_channels_last_changes_no_loss_term(method):
    """The speed flags that keep fp32 do not change what a method computes (here: channels-last)."""
    import copy

    import torch

    from dataset.batch import Batch
    from models import model_dict
    from tests.conftest import make_opt

    torch.manual_seed(0)
    opt = make_opt(distill=method, model_s="resnet8", model_t="resnet8", nce_k=16, n_data=64, init_epochs=1)
    distiller = distiller_zoo.build(opt, model_dict["resnet8"](num_classes=10), model_dict["resnet8"](num_classes=10))
    batch = Batch(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), torch.randperm(64)[:8],
                  torch.randint(0, 64, (8, 17)))
    twin = copy.deepcopy(distiller).to(memory_format=torch.channels_last)
    _, terms = distiller.train()(batch)
    _, twin_terms = twin.train()(Batch(batch.images.contiguous(memory_format=torch.channels_last), batch.targets,
                                       batch.indices, batch.contrast_indices))
    assert terms.keys() == twin_terms.keys()
    for name in terms:
        torch.testing.assert_close(twin_terms[name], terms[name], rtol=1e-4, atol=1e-5, equal_nan=True, msg=name)
