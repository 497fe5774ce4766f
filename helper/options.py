"""Command-line options of train_teacher.py and train_student.py, and their validation.

Flag names are those of RepDistiller and SimKD, so their sweep scripts run unchanged: both
``-r/-a/-b`` and SimKD's ``-c/-d/-b`` spellings, ``--path_t``, ``--gpu_id``, ``--dali``, and
every long flag also in its hyphenated form (``--path-t``). Every mistake raises
:class:`~errors.UsageError` with a one-line message; the entry scripts exit with 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import distiller_zoo
from dataset.catalog import BAD_IMAGE_CHOICES, DATASETS, LOADERS
from distiller_zoo.registry import all_arguments
from errors import UsageError
from helper.distributed import check_distributed_options
from helper.optim import DOT_DELTA, OPTIMIZERS
from models import model_dict, model_info
from models.library import check_library_name
from models.registry import IMAGENET_ALIASES, uses_small_lr
from models.spec import make_spec, parse_spec

MODEL_HELP = "any name in models.model_dict, or timm:<name> / torchvision:<name> (a timm or torchvision classifier)"
MODEL_ARGS_HELP = "constructor arguments key=value,... (e.g. patch_size=4,depth=6 for a CIFAR ViT)"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults in --help, except where the default is computed (the help text says how)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are usage errors (one line, exit 2, no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")

    def add_argument(self, *flags: str, **kwargs):  # type: ignore[override]
        return super().add_argument(*_with_hyphenated(flags), **_finite(kwargs))

    def add_argument_group(self, *args, **kwargs):  # type: ignore[override]
        """A group whose flags also get their hyphenated spelling (groups do not call the parser's add_argument)."""
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument
        group.add_argument = lambda *flags, **options: add(*_with_hyphenated(flags), **_finite(options))  # type: ignore[method-assign]
        return group


def _finite(options: dict) -> dict:
    """Every ``type=float`` flag takes finite numbers only."""
    return {**options, "type": finite_float} if options.get("type") is float else options


def finite_float(text: str) -> float:
    """A float flag's value: any finite number (``nan`` and ``inf`` would only fail later, mid-run)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A loss weight, temperature or rate: a finite number that is not negative."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def _with_hyphenated(flags: Sequence[str]) -> list[str]:
    """``("--path_t",)`` → ``["--path_t", "--path-t"]``: upstream scripts spell flags both ways."""
    hyphenated = [f.replace("_", "-") for f in flags if f.startswith("--") and "_" in f]
    return [*flags, *[h for h in hyphenated if h not in flags]]


def _common_parser(description: str) -> argparse.ArgumentParser:
    parser = _Parser(description=description, formatter_class=_HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="cifar100", choices=DATASETS)
    data.add_argument("--data_root", default="./data",
                      help="CIFAR: the folder holding cifar-100-python/ (or cifar-10-batches-py/); "
                           "ImageNet: the folder holding train/ and val/")
    data.add_argument("--batch_size", type=int, default=64, help="per process")
    data.add_argument("--num_workers", type=int, default=8, help="loader workers (capped at the CPU count)")
    data.add_argument("--loader", default="fast", choices=LOADERS,
                      help="CIFAR/digits: whole-set tensor pipeline (fast) or per-image PIL reference")
    data.add_argument("--dali", default=None, choices=["cpu", "gpu"], help="NVIDIA DALI pipeline for ImageNet")
    data.add_argument("--val_split", type=float, default=0.0,
                      help="hold out this fraction of the training set; the best checkpoint is chosen on it")
    data.add_argument("--bad_images", default="refuse", choices=BAD_IMAGE_CHOICES,
                      help="ImageNet folders: refuse to start when files are not readable images, or leave them out")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=240)
    optim.add_argument("--learning_rate", type=float, default=None,
                       help="default 0.05, or 0.01 for MobileNet/ShuffleNet networks (METHODS.md §3.2)")
    optim.add_argument("--lr_decay_epochs", default="150,180,210", help="comma-separated epochs")
    optim.add_argument("--lr_decay_rate", type=float, default=0.1)
    optim.add_argument("--weight_decay", type=float, default=5e-4)
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS,
                       help="sgd, or dot: DOT's separate task and distillation momenta (--momentum ∓ --dot_delta)")
    optim.add_argument("--dot_delta", type=non_negative_float, default=DOT_DELTA, help="DOT's momentum offset Δ")

    run = parser.add_argument_group("run")
    run.add_argument("--trial", default="0", help="experiment id, part of the run folder name")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic algorithms and seeded workers: two runs give the same weights")
    run.add_argument("--save_dir", default="./save", help="root of everything a run writes")
    run.add_argument("--save_freq", type=int, default=40, help="epochs between numbered checkpoints")
    run.add_argument("--print_freq", type=int, default=100, help="iterations between log lines")
    run.add_argument("--resume", default=None, help="a checkpoint path, or 'auto' for the run folder's latest")

    speed = parser.add_argument_group("speed and devices")
    speed.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="autocast precision")
    speed.add_argument("--channels_last", action="store_true")
    speed.add_argument("--compile", action="store_true", help="torch.compile the networks")
    speed.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    speed.add_argument("--gpu_id", default=None, help="sets CUDA_VISIBLE_DEVICES before CUDA starts")
    speed.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm under torchrun (CUDA only)")

    upstream = parser.add_argument_group("upstream launcher (SimKD/distillers ImageNet scripts)")
    upstream.add_argument("--multiprocessing_distributed", action="store_true",
                          help="upstream's one-process-per-GPU launcher: outside torchrun the run stops and "
                               "prints the equivalent torchrun command; ignored under torchrun")
    upstream.add_argument("--dist_url", default=None, help="upstream's rendezvous address; ignored (torchrun's)")
    return parser


def teacher_parser() -> argparse.ArgumentParser:
    """The parser of train_teacher.py."""
    parser = _common_parser("Train a network with cross-entropy (a teacher, or a plain student).")
    parser.add_argument("--model", default="resnet32x4", help=MODEL_HELP)
    parser.add_argument("--model_args", default=None, help=MODEL_ARGS_HELP)
    return parser


def student_parser() -> argparse.ArgumentParser:
    """The parser of train_student.py: the teacher flags plus distillation and method flags."""
    parser = _common_parser("Distil a teacher into a student with one of the registered methods.")
    parser.add_argument("--model_s", default="resnet8x4", help=f"student: {MODEL_HELP}")
    parser.add_argument("--model_s_args", default=None, help=f"student {MODEL_ARGS_HELP}")
    parser.add_argument("--path_t", default=None,
                        help="teacher checkpoint: this repository's, RepDistiller's/SimKD's {'model': ...}, "
                             "{'state_dict': ...} (timm), a plain state dict (torchvision) or .safetensors")
    parser.add_argument("--pretrained_t", action="store_true",
                        help="instead of --path_t: the teacher --model_t with its library's pretrained weights")
    parser.add_argument("--model_t", default=None,
                        help="teacher architecture (default: the checkpoint's record, else its folder or file name)")
    parser.add_argument("--model_t_args", default=None, help=f"teacher {MODEL_ARGS_HELP}")
    parser.add_argument("--skip_validation", action="store_true", help="do not evaluate the teacher first")

    distill = parser.add_argument_group("distillation")
    distill.add_argument("--distill", default=distiller_zoo.registry.DEFAULT_METHOD,
                         help="method: " + " ".join([*distiller_zoo.DISTILLERS, *distiller_zoo.registry.ALIASES]))
    distill.add_argument("-r", "--gamma", "-c", "--cls", dest="gamma", type=non_negative_float, default=None,
                         help="weight of cross-entropy with the labels (default: the method's recommendation)")
    distill.add_argument("-a", "--alpha", "-d", "--div", dest="alpha", type=non_negative_float, default=None,
                         help="weight of the KD term (default: the method's recommendation)")
    distill.add_argument("-b", "--beta", dest="beta", type=non_negative_float, default=None,
                         help="weight of the method's own term (default: the method's recommendation)")
    distill.add_argument("--kd_T", type=non_negative_float, default=4.0, help="KD temperature")

    methods = parser.add_argument_group("method flags")
    for arg in all_arguments():
        options = arg.options
        if options.get("type") is float:  # weights, temperatures and rates, unless declared signed
            options = {**options, "type": finite_float if arg.signed else non_negative_float}
        methods.add_argument(*arg.flags, dest=arg.dest, **options)
    return parser


def parse_lr_decay_epochs(text: str) -> list[int]:
    """``"150,180,210"`` → ``[150, 180, 210]``; anything else is a usage error."""
    try:
        epochs = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        epochs = []
    if not epochs or any(e <= 0 for e in epochs) or epochs != sorted(epochs):
        raise UsageError(f"--lr_decay_epochs {text!r} must be increasing positive integers, e.g. 150,180,210")
    return epochs


def resolve_model(name: str, dataset: str, flag: str, args: str | None = None) -> str:
    """The model spec (models/spec.py) for ``name`` and ``args`` on ``dataset``, or a usage error naming the fix.

    A registry name must be one for ``dataset``'s inputs; a library name must exist in its
    library, which is imported for that (and only then), and is sized for any data set.
    """
    spec = parse_spec(name, args, flag)
    if spec.library is not None:
        check_library_name(spec, flag)
        return spec.text
    base = IMAGENET_ALIASES.get(spec.name, spec.name) if dataset == "imagenet" else spec.name
    if base not in model_dict:
        raise UsageError(f"unknown model {flag} {base!r}; choose one of: {' '.join(model_dict)}, "
                         "or timm:<name> / torchvision:<name>")
    expected = "imagenet" if dataset == "imagenet" else "cifar"
    if model_info[base].input_kind != expected:
        raise UsageError(f"{flag} {base} is a {model_info[base].input_kind} network but --dataset is "
                         f"{dataset}; pick a {expected} network")
    return make_spec(base, spec.kwargs).text


def _validate_teacher_source(opt: argparse.Namespace) -> None:
    """One teacher source (a file, or the library's weights of --model_t); --model_t read as a spec."""
    if opt.pretrained_t == (opt.path_t is not None):
        raise UsageError("give the teacher as --path_t FILE, or as --model_t NAME --pretrained_t "
                         "(the library's weights), not both" if opt.pretrained_t else
                         "the teacher is missing: pass --path_t FILE, or --model_t NAME --pretrained_t")
    if opt.model_t is None and (opt.pretrained_t or opt.model_t_args):
        raise UsageError(f"--{'pretrained_t' if opt.pretrained_t else 'model_t_args'} needs --model_t")
    if opt.model_t is not None:
        opt.model_t = parse_spec(opt.model_t, opt.model_t_args, "--model_t").text


def _validate_common(opt: argparse.Namespace, model_name: str) -> None:
    for flag in ("batch_size", "epochs", "save_freq", "print_freq"):
        if vars(opt)[flag] <= 0:
            raise UsageError(f"--{flag} must be positive, got {vars(opt)[flag]}")
    if opt.num_workers < 0:
        raise UsageError(f"--num_workers must be 0 or more, got {opt.num_workers}")
    if opt.learning_rate is None:
        opt.learning_rate = 0.01 if uses_small_lr(model_name) and opt.dataset != "imagenet" else 0.05
    if opt.learning_rate <= 0:
        raise UsageError(f"--learning_rate must be positive, got {opt.learning_rate}")
    if opt.weight_decay < 0 or not 0 <= opt.momentum < 1 or opt.lr_decay_rate <= 0:
        raise UsageError("--weight_decay must be >= 0, --momentum in [0, 1) and --lr_decay_rate > 0")
    opt.lr_decay_epochs = parse_lr_decay_epochs(opt.lr_decay_epochs)
    if not 0 <= opt.val_split < 1:
        raise UsageError(f"--val_split must be in [0, 1), got {opt.val_split}")
    if opt.dali is not None and opt.dataset != "imagenet":
        raise UsageError("--dali applies to --dataset imagenet only")


def parse_teacher_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate train_teacher.py's command line."""
    opt = teacher_parser().parse_args(argv)
    check_distributed_options(opt, argv, "train_teacher.py" if argv is not None else sys.argv[0])
    opt.model = resolve_model(opt.model, opt.dataset, "--model", opt.model_args)
    _validate_common(opt, opt.model)
    return opt


def parse_student_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate train_student.py's command line (the teacher is checked on loading)."""
    opt = student_parser().parse_args(argv)
    check_distributed_options(opt, argv, "train_student.py" if argv is not None else sys.argv[0])
    opt.model_s = resolve_model(opt.model_s, opt.dataset, "--model_s", opt.model_s_args)
    _validate_common(opt, opt.model_s)
    _validate_teacher_source(opt)
    opt.distill = distiller_zoo.canonical_name(opt.distill)
    recommended = distiller_zoo.get(opt.distill).recommended
    opt.gamma = recommended.gamma if opt.gamma is None else opt.gamma
    opt.alpha = recommended.alpha if opt.alpha is None else opt.alpha
    opt.beta = recommended.beta if opt.beta is None else opt.beta
    for flag in ("feat_dim", "nce_k"):
        if vars(opt)[flag] <= 0:
            raise UsageError(f"--{flag} must be positive, got {vars(opt)[flag]}")
    if opt.kd_T <= 0:
        raise UsageError(f"--kd_T must be positive, got {opt.kd_T}")
    return opt


def parse_student_pack(argv: Sequence[str] | None = None) -> list[argparse.Namespace]:
    """Parse train_student.py's command line into one run's options, or a pack's (one per member).

    ``--distill A,B`` and ``--model_s a,b`` name a pack (helper/pack_args.py): each member's
    options are parsed from its own solo command line.
    """
    from helper.pack_args import member_argvs

    members = member_argvs(sys.argv[1:] if argv is None else argv)
    if len(members) == 1:
        return [parse_student_args(argv)]
    return [parse_student_args(member) for member in members]
