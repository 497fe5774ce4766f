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
