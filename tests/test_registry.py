"""The method registry: how a method file joins it, how names resolve, what every method's flags
do on the command line, and the public names a ported script imports.

Nothing here lists the methods: they are found by walking the ``distiller_zoo`` package, so
adding a method file needs no edit of this file.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import Distiller
from distiller_zoo.base import Argument
from distiller_zoo.registry import ALIASES, all_arguments, register
from errors import UsageError
from helper.options import parse_student_args
from tests.distiller_checks import build_with_options
from tests.fixtures import load_fixture

REPO = Path(__file__).resolve().parents[1]
DUMMY_TEACHER = "teachers/never_loaded/resnet32x4_best.pth"  # parsing does not read the checkpoint
UPSTREAM_NAMES = ("DistillKL HintLoss Attention Similarity Correlation VIDLoss RKDLoss PKT ABLoss FactorTransfer "
                  "FSP NSTLoss KDSVD CRDLoss RRDLoss DCDLoss ITLoss SemCKDLoss DKDLoss ConvReg Embed LinearEmbed "
                  "Connector Paraphraser Translator SelfA SRRL SimKD").split()


def parse(*argv: str):
    """train_student.py's options for ``argv`` (with a teacher path that is never opened)."""
    return parse_student_args(["--path_t", DUMMY_TEACHER, *argv])


def package_modules() -> list[ModuleType]:
    """Every module file of the ``distiller_zoo`` package, imported."""
    return [importlib.import_module(f"distiller_zoo.{info.name}")
            for info in pkgutil.iter_modules(distiller_zoo.__path__)]


def method_classes() -> dict[type[Distiller], ModuleType]:
    """The Distiller subclasses the package's files define that no other class of the package
    extends (intermediate bases such as a two-stage helper class are not methods), with their module."""
    defined = {obj: module for module in package_modules() for obj in vars(module).values()
               if isinstance(obj, type) and issubclass(obj, Distiller) and obj is not Distiller
               and obj.__module__ == module.__name__}
    bases = {base for cls in defined for base in cls.__mro__[1:]}
    return {cls: module for cls, module in defined.items() if cls not in bases}


def test_every_method_class_in_the_package_is_registered_under_its_name():
    found = method_classes()
    assert found, "walking distiller_zoo found no Distiller subclass"
    for cls, module in found.items():
        assert distiller_zoo.DISTILLERS.get(cls.name) is cls, f"{module.__name__}.{cls.__name__} is not registered"
    assert set(distiller_zoo.DISTILLERS.values()) == set(found)


def test_every_alias_resolves_to_a_registered_method():
    assert ALIASES, "no method declares an upstream alias"
    for alias, name in ALIASES.items():
        assert distiller_zoo.canonical_name(alias) == name
        assert distiller_zoo.get(alias) is distiller_zoo.DISTILLERS[name]
        assert parse("--distill", alias).distill == name


@pytest.mark.parametrize("method", sorted(load_fixture("recommended_weights.json")))
def test_upstream_spellings_of_a_method_resolve_to_it(method):
    for spelling in (method, *load_fixture("recommended_weights.json")[method]["aliases"]):
        assert distiller_zoo.canonical_name(spelling) == method
        assert parse("--distill", spelling).distill == method


def test_unknown_method_is_a_usage_error_that_lists_the_choices():
    for call in (distiller_zoo.canonical_name, distiller_zoo.get, lambda name: parse("--distill", name)):
        with pytest.raises(UsageError, match="unknown method") as error:
            call("telepathy")
        listed = str(error.value).split("choose one of:")[1].split()
        assert set(distiller_zoo.DISTILLERS) | set(ALIASES) <= set(listed)


def test_a_name_or_alias_cannot_be_registered_twice():
    before = (dict(distiller_zoo.DISTILLERS), dict(ALIASES))
    try:
        for name, aliases in (("kd", ()), ("a_new_method", ("fitnet",)), ("a_new_method", ("hint",))):
            with pytest.raises(ValueError, match="registered twice"):
                register(name, *aliases)(type("Clash", (Distiller,), {}))
        assert before == (distiller_zoo.DISTILLERS, ALIASES)
    finally:
        distiller_zoo.DISTILLERS.pop("a_new_method", None)


DROPPED_METHOD = '''
"""A method that exists only in this temporary copy of the package."""
from distiller_zoo.base import Distiller, Weights, argument
from distiller_zoo.registry import register


@register("dropped_in", "dropped")
class DroppedIn(Distiller):
    recommended = Weights(gamma=0.5, alpha=0.25, beta=2.0)
    arguments = (argument("--dropped_width", type=int, default=3, help="a flag of the dropped-in method"),)
'''

PROBE = '''
import json, sys
import distiller_zoo
from helper.options import parse_student_args

opt = parse_student_args(["--path_t", "never_loaded.pth", "--distill", "dropped", "--dropped-width", "5"])
default = parse_student_args(["--path_t", "never_loaded.pth"])
print(json.dumps({"module": distiller_zoo.get("dropped_in").__module__, "distill": opt.distill,
                  "width": opt.dropped_width, "alpha": opt.alpha, "beta": opt.beta,
                  "default_width": default.dropped_width}))
'''


def test_a_method_file_dropped_into_the_package_registers_itself(tmp_path):
    """Copy the package, add one method file to the copy, and import it in a fresh interpreter:
    the method is registered, its alias resolves and its flag is on train_student.py's command line."""
    shutil.copytree(REPO / "distiller_zoo", tmp_path / "distiller_zoo", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "distiller_zoo" / "dropped_in.py").write_text(DROPPED_METHOD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen == {"module": "distiller_zoo.dropped_in", "distill": "dropped_in", "width": 5, "alpha": 0.25,
                    "beta": 2.0, "default_width": 3}


def sample_value(arg: Argument) -> object:
    """A value for ``arg`` that differs from its default and is valid for its type and choices."""
    default = arg.options.get("default")
    if "choices" in arg.options:
        return next(choice for choice in arg.options["choices"] if choice != default)
    value_type = arg.options.get("type", str)
    return value_type(default) + value_type(1) if value_type in (int, float) else f"{default}_other"


@pytest.mark.parametrize("method", sorted(distiller_zoo.DISTILLERS))
def test_every_declared_flag_of_a_method_parses_in_each_spelling(method):
    cls = distiller_zoo.get(method)
    defaults = parse("--distill", method)
    for arg in cls.arguments:
        assert getattr(defaults, arg.dest) == arg.options.get("default"), arg.dest
        switch = arg.options.get("action") == "store_true"
        value = True if switch else sample_value(arg)
        hyphenated = [flag.replace("_", "-") for flag in arg.flags if flag.startswith("--") and "_" in flag]
        for flag in (*arg.flags, *hyphenated):
            words = (flag,) if switch else (flag, str(value))
            assert getattr(parse("--distill", method, *words), arg.dest) == value, flag


def test_method_flags_are_declared_once_and_alike():
    declared = {arg.dest: arg for arg in all_arguments()}
    assert len(declared) == len(all_arguments())
    for cls in distiller_zoo.DISTILLERS.values():
        for arg in cls.arguments:
            assert declared[arg.dest] == arg, f"{cls.name} declares --{arg.dest} differently"


@pytest.mark.parametrize("name", UPSTREAM_NAMES)
def test_upstream_class_names_import_from_distiller_zoo(name):
    assert isinstance(getattr(distiller_zoo, name), type)


def any_method_batch() -> Batch:
    """A batch that carries what any method may ask for (indices, 16 contrast indices per sample, a second view)."""
    return Batch(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), torch.randperm(64)[:8],
                 torch.randint(0, 64, (8, 17)), strong_images=torch.randn(8, 3, 32, 32))


@pytest.mark.parametrize("method", sorted(distiller_zoo.DISTILLERS))
def test_cls_and_kd_terms_keep_the_weights_given_on_the_command_line(method):
    """-r weighs cross-entropy and -a the KD term, for every method; every other term is the method's own."""
    torch.manual_seed(0)
    distiller, _ = build_with_options(method, "resnet8", "resnet8", gamma=0.2, alpha=0.3, beta=0.7, nce_k=16,
                                      n_data=64, init_epochs=1)
    assert distiller.loss_weights["cls"] == 0.2
    assert distiller.loss_weights["kd"] == 0.3
    _, terms = distiller.train()(any_method_batch())
    assert set(distiller.loss_weights) == set(terms)


@pytest.mark.parametrize("method", sorted(distiller_zoo.DISTILLERS))
def test_channels_last_changes_no_loss_term(method):
    """The speed flags that keep fp32 do not change what a method computes (here: channels-last)."""
    torch.manual_seed(0)
    distiller, _ = build_with_options(method, "resnet8", "resnet8", nce_k=16, n_data=64, init_epochs=1)
    batch = any_method_batch()
    twin = copy.deepcopy(distiller).to(memory_format=torch.channels_last)
    _, terms = distiller.train()(batch)
    channels_last = {name: getattr(batch, name).contiguous(memory_format=torch.channels_last)
                     for name in ("images", "strong_images")}
    _, twin_terms = twin.train()(dataclasses.replace(batch, **channels_last))
    assert terms.keys() == twin_terms.keys()
    for name in terms:
        torch.testing.assert_close(twin_terms[name], terms[name], rtol=1e-4, atol=1e-5, equal_nan=True, msg=name)
