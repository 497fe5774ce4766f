"""Model specs (models/spec.py): names with arguments, their folder-safe form, and where the options read them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from errors import UsageError
from helper import checkpoint as ckpt
from helper.options import parse_student_args, parse_teacher_args, resolve_model
from helper.run_names import parse_run_name, student_run_name, teacher_run_name
from models.spec import parse_args, parse_spec, spec_from_component, split_pair

REPO = Path(__file__).resolve().parents[1]
VIT = "timm:vit_tiny_patch16_224"


def test_argument_values_are_read_as_bools_none_ints_floats_or_strings():
    assert parse_args("patch_size=4, drop_rate=0.1,class_token=False,global_pool=avg,init_values=none,x=-3") == {
        "patch_size": 4, "drop_rate": 0.1, "class_token": False, "global_pool": "avg", "init_values": None, "x": -3}
    assert parse_args(None) == parse_args("") == {}


@pytest.mark.parametrize("text", ["patch_size", "=4", "a b=1", "depth=6/2", "depth=a:b", "d=1,d=2"])
def test_a_malformed_argument_is_one_usage_error(text):
    with pytest.raises(UsageError, match="model_s_args") as error:
        parse_args(text, "--model_s_args")
    assert "\n" not in str(error.value)


def test_a_spec_is_written_with_sorted_arguments_and_reads_back():
    spec = parse_spec(VIT, "patch_size=4,depth=6,drop_rate=0.1")
    assert spec.text == f"{VIT}@depth=6,drop_rate=0.1,patch_size=4"
    assert (spec.library, spec.library_name) == ("timm", "vit_tiny_patch16_224")
    assert parse_spec(spec.text) == spec
    assert parse_spec(spec.text, "depth=2").kwargs == {"depth": 2, "drop_rate": 0.1, "patch_size": 4}  # the flag wins
    assert parse_spec("resnet8").library is None and parse_spec("resnet8").text == "resnet8"


def test_an_unknown_library_or_a_bad_name_is_refused():
    with pytest.raises(UsageError, match="unknown library 'keras'"):
        parse_spec("keras:resnet")
    with pytest.raises(UsageError, match="not a model name"):
        parse_spec("timm:../x")


@pytest.mark.parametrize("spec", ["resnet8", "timm:resnet18", f"{VIT}@depth=6,patch_size=4", "torchvision:resnet34"])
def test_run_folders_name_library_networks_without_separators_and_read_back(spec):
    student = student_run_name(spec, "timm:resnet10t", "cifar100", "kd", 0.1, 0.9, 0, 1)
    teacher = teacher_run_name(spec, "digits", 0)
    assert (student.count(":"), teacher.count(":")) == (5, 0)  # only the S: T: r: a: b: tags
    for name in (student, teacher):
        assert "/" not in name
        run = parse_run_name(name)
        assert spec_from_component(run.model) == spec
    assert spec_from_component(parse_run_name(student).teacher) == "timm:resnet10t"
    assert parse_run_name(student).weights == (0.1, 0.9, 0.0)


def test_a_sweep_pair_splits_around_library_prefixes():
    assert split_pair("resnet56:resnet20") == ("resnet56", "resnet20")
    assert split_pair("timm:resnet50:torchvision:resnet18") == ("timm:resnet50", "torchvision:resnet18")
    assert split_pair("ResNet34:timm:vit_tiny_patch16_224") == ("ResNet34", "timm:vit_tiny_patch16_224")
    assert split_pair("resnet56") is None and split_pair("a:b:c") is None


def test_resolve_model_checks_library_names_in_the_library():
    assert resolve_model("timm:resnet10t", "cifar100", "--model") == "timm:resnet10t"
    assert resolve_model("torchvision:resnet18", "imagenet", "--model", "zero_init_residual=true") == \
        "torchvision:resnet18@zero_init_residual=true"
    with pytest.raises(UsageError, match="timm has no model 'resnet9000'"):
        resolve_model("timm:resnet9000", "cifar100", "--model_s")
    with pytest.raises(UsageError, match="torchvision has no classification model 'fasterrcnn_resnet50_fpn'"):
        resolve_model("torchvision:fasterrcnn_resnet50_fpn", "imagenet", "--model_s")
    assert resolve_model("ResNet50", "imagenet", "--model") == "ResNet50_Imagenet"  # registry names as before


def test_options_read_model_arguments_into_the_spec(tmp_path):
    opt = parse_teacher_args(["--model", VIT, "--model_args", "patch_size=4,depth=2"])
    assert opt.model == f"{VIT}@depth=2,patch_size=4" and opt.learning_rate == 0.05
    opt = parse_student_args(["--path_t", "t.pth", "--model_s", "timm:resnet10t", "--model_t", VIT,
                              "--model-t-args", "patch_size=4"])
    assert (opt.model_s, opt.model_t) == ("timm:resnet10t", f"{VIT}@patch_size=4")


@pytest.mark.parametrize("argv, message", [
    ([], "the teacher is missing: pass --path_t FILE, or --model_t NAME --pretrained_t"),
    (["--path_t", "t.pth", "--pretrained_t", "--model_t", "timm:resnet10t"], "not both"),
    (["--pretrained_t"], "--pretrained_t needs --model_t"),
    (["--path_t", "t.pth", "--model_t_args", "depth=2"], "--model_t_args needs --model_t"),
])
def test_the_teacher_source_is_one_of_a_file_or_library_weights(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_student_args(argv)


def test_pretrained_t_reads_the_library_name_without_a_file():
    opt = parse_student_args(["--pretrained_t", "--model_t", "torchvision:resnet18", "--dataset", "imagenet",
                              "--model_s", "ResNet18"])
    assert opt.path_t is None and opt.pretrained_t and opt.model_t == "torchvision:resnet18"


def test_the_architecture_of_a_library_run_folder_is_read_back(tmp_path):
    folder = tmp_path / teacher_run_name(f"{VIT}@patch_size=4", "cifar100", 0)
    folder.mkdir()
    assert ckpt.infer_arch_from_path(folder / "x_best.pth") == f"{VIT}@patch_size=4"
    student = tmp_path / student_run_name("torchvision:resnet18", "resnet8", "cifar100", "kd", 1, 1, 0, 0)
    student.mkdir()
    assert ckpt.infer_arch_from_path(student / "last.pth") == "torchvision:resnet18"


@pytest.mark.parametrize("filename, arch", [("resnet34-b627a593.pth", "ResNet34"),
                                            ("wide_resnet50_2-95faca4d.pth", "wrn_50_2"),
                                            ("shufflenetv2_x1-5666bf0f80.pth", "ShuffleV2_Imagenet"),
                                            ("vgg11-8a719046.pth", "torchvision:vgg11"),
                                            ("nonet-8a719046.pth", None), ("resnet34.pth", None)])
def test_torchvision_weight_files_name_their_network(tmp_path, filename, arch):
    assert ckpt.infer_arch_from_path(tmp_path / filename) == arch


def test_help_and_a_library_free_run_import_no_model_library(tmp_path):
    """timm takes seconds to import: only a timm: name the user gave may import it."""
    code = textwrap.dedent("""
        import sys
        from helper.options import parse_student_args, student_parser
        student_parser().format_help()
        parse_student_args(["--path_t", "t.pth", "--model_s", "resnet8", "--model_t", "resnet32x4",
                            "--model_s_args", "taps=2"])
        print("timm" in sys.modules, "torchvision" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False"]


def test_a_safetensors_file_is_never_unpickled(tmp_path):
    """A pickle that would run code, named .safetensors, is refused without running it."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "teacher.safetensors"
    torch.save({"model": Payload()}, path)
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(path)
    assert not marker.exists()
