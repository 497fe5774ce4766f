"""Start-up of the entry scripts: ``--help`` and a usage error import only what they use.

torchvision (through ``torch._dynamo``), timm, TensorBoard, scikit-learn and DALI each take a second or
more to import; a run imports them when it builds an ImageNet or library network, writes its first event,
reads digits or starts a DALI pipeline. The modules a command imported are read from
``python -X importtime``; how long that takes is measured by hand, not tested. The ImageNet
families are declared in models/registry.py and imported on first build: the declarations are
checked here against what the modules register.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from models.registry import (
    LAZY_IMAGENET_FAMILIES,
    LazyBuilder,
    declare_lazy_family,
    lazy_builders,
    model_dict,
    model_info,
    register_model,
)

REPO = Path(__file__).resolve().parents[1]
SLOW_PACKAGES = ("torchvision", "timm", "tensorboard", "sklearn", "nvidia", "torch._dynamo")

COMMANDS = {
    "student --help": (["train_student.py", "--help"], 0, "--distill"),
    "student unknown method": (["train_student.py", "--path_t", "x", "--distill", "nope"], 2, "unknown method"),
    "teacher --help": (["train_teacher.py", "--help"], 0, "--model"),
    # An ImageNet network is refused for CIFAR from its declared ModelInfo, without importing its family.
    "teacher ImageNet network on CIFAR": (["train_teacher.py", "--model", "ResNet18"], 2, "ResNet18 is a imagenet"),
}


def _imported_modules(importtime_log: str) -> list[str]:
    """The module names of a ``-X importtime`` log (``import time: self | cumulative | name``)."""
    return [line.rsplit("|", 1)[1].strip() for line in importtime_log.splitlines()
            if line.startswith("import time:") and line.count("|") == 2]


def _slow(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in SLOW_PACKAGES))


def _run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_importtime_log_is_read_as_module_names():
    log = ("import time: self [us] | cumulative | imported package\n"
           "import time:       308 |     454080 | torch\n"
           "import time:        23 |       5023 |   torchvision.ops\n"
           "error: unknown method --distill 'a|b'\n")
    assert _imported_modules(log) == ["imported package", "torch", "torchvision.ops"]
    assert _slow(["torch", "torchvision.ops", "torch._dynamo.utils", "torch.utils", "nvidia.dali", "sklearnx"]) == [
        "nvidia.dali", "torch._dynamo.utils", "torchvision.ops"]


@pytest.mark.parametrize("case", sorted(COMMANDS))
def test_help_and_usage_errors_import_no_slow_package(case, tmp_path):
    (script, *args), status, expected = COMMANDS[case]
    result = _run_python([str(REPO / script), *args], cwd=tmp_path)
    assert result.returncode == status, result.stderr[-2000:]
    assert expected in result.stdout + result.stderr
    modules = _imported_modules(result.stderr)
    assert "helper.options" in modules  # the log was read: the script's own modules are in it
    assert _slow(modules) == []


def test_building_a_declared_network_imports_its_family_in_a_fresh_process(tmp_path):
    code = textwrap.dedent("""
        import sys
        import models
        assert "torchvision" not in sys.modules and "models.imagenet_resnet" not in sys.modules
        assert type(models.model_dict["ResNet34"]).__name__ == "LazyBuilder"
        network = models.model_dict["ResNet34"](num_classes=7)
        print(network.fc.out_features, models.model_dict["ResNet34"].__module__, "torchvision" in sys.modules,
              "models.imagenet_mobilenetv2" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["7", "models.imagenet_resnet", "True", "False"]


def test_every_lazy_name_is_listed_with_its_declared_info():
    declared = [name for names in LAZY_IMAGENET_FAMILIES.values() for name in names]
    assert len(declared) == len(set(declared)) == 13
    for module, names in LAZY_IMAGENET_FAMILIES.items():
        for name in names:
            assert name in model_dict and name in model_info
            assert lazy_builders[name].module == module
            assert model_info[name] == lazy_builders[name].info
            assert (model_info[name].input_kind, model_info[name].small_lr) == ("imagenet", False)


@pytest.mark.parametrize("module", sorted(LAZY_IMAGENET_FAMILIES))
def test_each_family_registers_exactly_its_declared_networks(module):
    importlib.import_module(module)
    registered = {name for name, builder in model_dict.items() if getattr(builder, "__module__", None) == module}
    assert registered == set(LAZY_IMAGENET_FAMILIES[module])
    for name in LAZY_IMAGENET_FAMILIES[module]:
        assert not isinstance(model_dict[name], LazyBuilder)
        assert model_info[name] == lazy_builders[name].info
        with torch.device("meta"):  # the structure only: no memory, no initialisation cost
            network = lazy_builders[name](num_classes=11)
        assert network.get_classifier().out_features == 11


FAKE_NET = """
from torch import nn
from models.registry import register_model

@register_model("FakeNet_{tag}", input_kind="{kind}")
def FakeNet(num_classes=1000):
    return nn.Linear(3, num_classes)
"""


@pytest.fixture
def fake_family(tmp_path, monkeypatch):
    """Write a family module ``fake_family_<tag>`` registering ``FakeNet_<tag>``; undo every registration after."""
    before = {id(table): set(table) for table in (model_dict, model_info, lazy_builders)}
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(tag: str, kind: str) -> str:
        module = f"fake_family_{tag}"
        (tmp_path / f"{module}.py").write_text(FAKE_NET.format(tag=tag, kind=kind))
        importlib.invalidate_caches()
        written.append(module)
        return module

    yield write
    for table in (model_dict, model_info, lazy_builders):
        for name in set(table) - before[id(table)]:
            del table[name]
    for module in written:
        sys.modules.pop(module, None)


def test_a_declared_network_is_built_through_its_stand_in(fake_family):
    module = fake_family("ok", "cifar")
    declare_lazy_family(module, ["FakeNet_ok"], input_kind="cifar")
    assert module not in sys.modules and isinstance(model_dict["FakeNet_ok"], LazyBuilder)
    network = model_dict["FakeNet_ok"](num_classes=5)
    assert module in sys.modules and network.out_features == 5
    assert model_dict["FakeNet_ok"].__module__ == module
    assert model_info["FakeNet_ok"] == lazy_builders["FakeNet_ok"].info


def test_a_family_that_registers_other_info_than_declared_is_refused(fake_family):
    module = fake_family("kind", "imagenet")
    declare_lazy_family(module, ["FakeNet_kind"], input_kind="cifar")
    with pytest.raises(ValueError, match=r"declared as .*input_kind='cifar'.* registers as .*'imagenet'"):
        model_dict["FakeNet_kind"](num_classes=5)


def test_a_declared_name_its_family_does_not_register_is_reported(fake_family):
    module = fake_family("other", "cifar")
    declare_lazy_family(module, ["FakeNet_missing"], input_kind="cifar")
    with pytest.raises(RuntimeError, match="does not register the model 'FakeNet_missing'"):
        model_dict["FakeNet_missing"](num_classes=5)


def test_a_declared_name_is_not_taken_by_another_module(fake_family):
    declare_lazy_family("fake_family_elsewhere", ["FakeNet_taken"], input_kind="cifar")
    with pytest.raises(ValueError, match="declared for fake_family_elsewhere but registered by"):
        register_model("FakeNet_taken", input_kind="cifar")(lambda num_classes=1000: torch.nn.Linear(1, num_classes))
    assert isinstance(model_dict["FakeNet_taken"], LazyBuilder)
    with pytest.raises(ValueError, match="registered twice"):
        declare_lazy_family("fake_family_elsewhere", ["resnet8"], input_kind="cifar")
