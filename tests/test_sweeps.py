"""scripts/run_cifar_vanilla.sh, run_cifar_distill.sh and sweep.py: the sweeps behind the tables."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import distiller_zoo
from helper.driver import run_name
from helper.options import parse_student_args, parse_teacher_args
from helper.pack_args import member_argvs
from scripts import launchers, plot_curves, published, summarize, sweep
from tests.runfolders import REPO

KD_ROWS = ("crd", "rrd", "dcd")  # the "+KD" rows of METHODS.md §4
# FSP and KDSVD match maps channel by channel: of the standard pairs, only these have equal widths
EQUAL_WIDTH_PAIRS = {("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
                     ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")}
STANDARD_PAIRS = [pair for table in published.TABLES for pair in table.pairs]
# The rows that run with flags of their own (METHODS.md §1.25, §1.31): key → method, -r -a -b, options set
FLAGGED_ROWS = {
    "kd+ls": ("kd", (0.1, 9.0, 0.0), {"logit_stand": True, "kd_T": 2.0}),
    "dkd+ls": ("dkd", (1.0, 0.0, 9.0), {"logit_stand": True, "kd_T": 2.0}),
    "ctkd+ls": ("ctkd", (0.1, 9.0, 0.0), {"logit_stand": True}),
    "mlkd+ls": ("mlkd", (0.1, 0.0, 9.0), {"logit_stand": True, "kd_T": 2.0}),
    "kd+dot": ("kd", (0.1, 0.9, 0.0), {"optimizer": "dot"}),
}
PLAIN = {"logit_stand": False, "kd_T": 4.0, "optimizer": "sgd"}  # train_student.py's defaults of those options


def row_key(opt) -> str:
    """The row a sweep command runs, told from its options alone: a flagged row, a "+KD" row or a method's own."""
    options = {name: getattr(opt, name) for name in PLAIN}
    weights = (opt.gamma, opt.alpha, opt.beta)
    if options != PLAIN:
        (key,) = [key for key, (method, row_weights, flags) in FLAGGED_ROWS.items()
                  if (method, row_weights) == (opt.distill, weights) and options == {**PLAIN, **flags}]
        return key
    recommended = distiller_zoo.get(opt.distill).recommended
    with_kd = opt.distill in KD_ROWS and opt.alpha == 1.0 and recommended.alpha == 0.0
    assert weights == (recommended.gamma, 1.0 if with_kd else recommended.alpha, recommended.beta)
    return opt.distill + ("+kd" if with_kd else "")


def sweep_script(name: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``scripts/<name>`` from ``cwd`` (not the repository) with ``env`` added."""
    return subprocess.run(["bash", str(REPO / "scripts" / name)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **env}, timeout=600)


def runs(lines: str) -> list[list[str]]:
    """The printed command lines as the runs they start: a pack's line gives each member's solo command line."""
    commands = [shlex.split(line) for line in lines.splitlines()]
    return [[*argv[:2], *member] for argv in commands for member in member_argvs(argv[2:])]


def dry_run(kind: str, env: dict[str, str], capsys) -> list[list[str]]:
    """The runs ``sweep.py kind`` prints with ``DRY_RUN=1`` (in-process), as solo command lines."""
    capsys.readouterr()
    assert sweep.main([kind], {"PYTHON": "python", **env, "DRY_RUN": "1"}) == 0
    return runs(capsys.readouterr().out)


def test_distill_dry_run_is_every_method_on_every_pair_once_per_trial(tmp_path):
    done = sweep_script("run_cifar_distill.sh", {"DRY_RUN": "1", "TRIALS": "2", "SAVE_DIR": str(tmp_path / "save")},
                        cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    planned, folders = Counter(), Counter()
    for argv in runs(done.stdout):
        assert argv[:2] == [sys.executable, str(REPO / "train_student.py")]
        opt = parse_student_args(argv[2:])
        teacher = Path(opt.path_t).parent.name.removesuffix("_vanilla_cifar100_trial_1")
        assert opt.dataset == "cifar100" and opt.seed == int(opt.trial) and opt.resume == "auto"
        assert opt.save_dir == str(tmp_path / "save")
        planned[teacher, opt.model_s, row_key(opt), opt.trial] += 1
        folders[run_name(opt, teacher)] += 1
    assert set(planned.values()) == {1}  # no run twice
    assert set(folders.values()) == {1}  # and no two rows share a run folder (KD+DOT's is kd+dot, DKD+LS's b:9.0)

    methods = [*distiller_zoo.DISTILLERS, *(f"{method}+kd" for method in KD_ROWS), *FLAGGED_ROWS]
    expected = {(teacher, student, method, trial) for teacher, student in STANDARD_PAIRS for method in methods
                for trial in ("1", "2")
                if method not in ("fsp", "kdsvd", "ega") or (teacher, student) in EQUAL_WIDTH_PAIRS}
    assert set(planned) == expected
    assert "skip FSP on wrn_40_2→wrn_40_1" in done.stderr
    assert "teacher wrn_40_2 not found" in done.stderr


def test_vanilla_dry_run_is_every_network_once_per_trial(tmp_path):
    env = {"DRY_RUN": "1", "TRIALS": "2", "GPUS": "0", "EXTRA_ARGS": "--epochs 1 --nce_k 64"}
    done = sweep_script("run_cifar_vanilla.sh", env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = Counter()
    for line in done.stdout.splitlines():
        argv = shlex.split(line)
        assert argv[:2] == [sys.executable, str(REPO / "train_teacher.py")]
        opt = parse_teacher_args(argv[2:])
        assert opt.epochs == 1 and opt.gpu_id == "0" and opt.save_dir == "./save" and opt.data_root == "./data"
        runs[opt.model, opt.trial] += 1
    networks = {name for pair in STANDARD_PAIRS for name in pair}
    assert runs == Counter({(name, trial): 1 for name in networks for trial in ("1", "2")})
    assert "--nce_k 64" in done.stderr  # student-only flags are named as dropped


@pytest.fixture
def released_teacher(tmp_path):
    """A teacher checkpoint where the distill sweep finds one, so that its commands would start."""
    released = tmp_path / "teachers" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    released.parent.mkdir(parents=True)
    released.touch()
    return {"PAIRS": "resnet8:resnet8", "METHODS": "kd", "TRIALS": "2", "TEACHER_DIR": str(tmp_path / "teachers"),
            "SAVE_DIR": str(tmp_path / "save")}


def test_filters_select_rows_and_a_non_standard_pair_runs_as_given(tmp_path, released_teacher, capsys):
    released = tmp_path / "teachers" / "resnet8_vanilla" / "ckpt_epoch_240.pth"  # RepDistiller's layout
    commands = dry_run("distill", {**released_teacher, "METHODS": "kd,fitnet,crd+kd"}, capsys)
    options = [parse_student_args(argv[2:]) for argv in commands]
    per_trial = [("kd", 0.9), ("hint", 0.0), ("crd", 1.0)]  # trials are the outer loop
    assert [(opt.distill, opt.alpha, opt.trial) for opt in options] == [
        (method, alpha, trial) for trial in ("1", "2") for method, alpha in per_trial]
    assert {opt.path_t for opt in options} == {str(released)}


def test_rows_with_flags_run_with_them(released_teacher, capsys):
    env = {**released_teacher, "METHODS": "kd+dot,dkd+ls,kd+ls,kd", "TRIALS": "1"}
    assert [row_key(parse_student_args(argv[2:])) for argv in dry_run("distill", env, capsys)] == [
        "kd", "kd+ls", "dkd+ls", "kd+dot"]  # the papers' order, whatever METHODS says
    assert sweep.main(["distill"], {**env, "DRY_RUN": "1"}) == 0
    packs = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [argv[argv.index("--distill") + 1] for argv in packs] == ["kd", "kd,dkd", "kd"]  # "+LS" rows together
    plain, ls, dot = (argv[argv.index("-b") + 2:] for argv in packs)  # what follows the weights
    assert ls[:3] == ["--logit_stand", "--kd_T", "2"]
    assert dot[:2] == ["--optimizer", "dot"]
    assert plain[0] == "--dataset" and not {"--logit_stand", "--optimizer", "--kd_T"} & set(plain)


def test_extra_args_that_make_two_rows_equal_run_them_once(released_teacher, capsys):
    env = {**released_teacher, "METHODS": "kd,kd+dot", "EXTRA_ARGS": "--optimizer dot", "DRY_RUN": "1"}
    assert sweep.main(["distill"], env) == 0
    out, err = capsys.readouterr()
    options = [parse_student_args(argv[2:]) for argv in runs(out)]
    assert [(opt.optimizer, opt.trial) for opt in options] == [("dot", "1"), ("dot", "2")]
    assert "note: 2 run(s) planned once: EXTRA_ARGS gives two rows the same run folder" in err


@pytest.mark.parametrize("env, message", [
    ({"METHODS": "kd,nosuchmethod"}, "METHODS entry 'nosuchmethod'"),
    ({"PAIRS": "resnet56-resnet20"}, "teacher:student"),
    ({"PAIRS": "resnet56:nosuchnet"}, "unknown model PAIRS 'nosuchnet'"),
    ({"TRIALS": "three"}, "TRIALS"),
    ({"EXTRA_ARGS": "--no_such_flag 1"}, "--no_such_flag"),
])
def test_bad_settings_fail_before_anything_runs(env, message, capsys):
    assert sweep.main(["distill"], {"DRY_RUN": "1", "PAIRS": "resnet8:resnet8", **env}) == 2
    assert message in capsys.readouterr().err


# Flags the sweep sets itself, in every spelling train_student.py accepts: EXTRA_ARGS may not repeat them.
OWNED_FLAGS = [
    "--trial 5", "--trial=5", "--tri 5", "--seed 3", "--distill crd", "--distill=crd", "--model_s resnet8",
    "--model-s=resnet8", "--model_t resnet8", "--model-t resnet8", "--path_t t.pth", "--path-t=t.pth",
    "-r 0.5", "-r0.5", "--gamma 0.5", "-c 0.5", "--cls=0.5", "-a 1", "--alpha=1", "-d 1", "--div 1",
    "-b 0.3", "--beta 0.3", "--save_dir /elsewhere", "--save-dir=/elsewhere", "--dataset cifar10",
    "--data_root /elsewhere", "--data-root /elsewhere", "--resume latest.pth", "--model resnet8",
]


@pytest.mark.parametrize("kind", ["vanilla", "distill"])
@pytest.mark.parametrize("extra", OWNED_FLAGS)
def test_extra_args_may_not_set_what_the_sweep_sets(kind, extra, released_teacher, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(launchers.LocalLauncher, "launch", lambda self, *args: started.append(args))
    assert sweep.main([kind], {**released_teacher, "EXTRA_ARGS": f"--epochs 1 {extra}"}) == 2
    out, err = capsys.readouterr()
    assert started == [] and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: EXTRA_ARGS")
    assert extra.split()[0].split("=")[0] in err


def test_a_refused_flag_says_where_to_set_it_instead(released_teacher, capsys):
    assert sweep.main(["distill"], {**released_teacher, "EXTRA_ARGS": "--nce_k 64 --trial=5 -c 0.5"}) == 2
    err = capsys.readouterr().err
    assert "--trial=5 sets --trial (TRIALS)" in err and "-c 0.5 sets --gamma (METHODS" in err
    assert "nce_k" not in err


def test_gpu_id_is_refused_only_when_gpus_sets_it(released_teacher, capsys):
    env = {**released_teacher, "EXTRA_ARGS": "--gpu_id 1"}
    assert sweep.main(["vanilla"], {**env, "GPUS": "0", "DRY_RUN": "1"}) == 2
    assert "sets --gpu_id (GPUS)" in capsys.readouterr().err
    commands = dry_run("vanilla", env, capsys)
    assert {parse_teacher_args(argv[2:]).gpu_id for argv in commands} == {"1"}


def test_finished_runs_are_skipped(tmp_path, capsys):
    save = tmp_path / "save"
    env = {"PAIRS": "resnet8:resnet8", "METHODS": "kd,crd", "TRIALS": "2", "SAVE_DIR": str(save)}
    commands = dry_run("distill", env, capsys)
    assert len(commands) == 4
    kd_1, crd_1 = (parse_student_args(argv[2:]) for argv in commands[:2])
    for opt, finished in ((kd_1, True), (crd_1, False)):  # an interrupted run is run again (it resumes)
        folder = save / "students" / "models" / f"S:resnet8_T:resnet8_cifar100_{opt.distill}_r:{opt.gamma}" \
            f"_a:{opt.alpha}_b:{opt.beta}_{opt.trial}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"finished": finished}))
    remaining = [parse_student_args(argv[2:]) for argv in dry_run("distill", env, capsys)]
    assert [(opt.distill, opt.trial) for opt in remaining] == [("crd", "1"), ("kd", "2"), ("crd", "2")]

    teacher_folder = save / "teachers" / "models" / "resnet8_vanilla_cifar100_trial_2"
    teacher_folder.mkdir(parents=True)
    (teacher_folder / "summary.json").write_text(json.dumps({"finished": True}))
    teachers = [parse_teacher_args(argv[2:]) for argv in dry_run("vanilla", env, capsys)]
    assert [opt.trial for opt in teachers] == ["1"]


def test_a_tiny_sweep_runs_end_to_end(tmp_path, cifar100_root, capsys):
    """vanilla sweep → distill sweep → table and curves, on the generated CIFAR-100 files."""
    save = tmp_path / "save"
    env = {"DATA_ROOT": str(cifar100_root), "SAVE_DIR": str(save), "PAIRS": "resnet8:resnet8", "METHODS": "kd,crd",
           "TRIALS": "1", "EXTRA_ARGS": "--epochs 1 --num_workers 0 --batch_size 32 --nce_k 64 --print_freq 1000"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("run_cifar_vanilla.sh", "run_cifar_distill.sh"):
        done = sweep_script(name, env, cwd=elsewhere)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for folder in ("teachers/models/resnet8_vanilla_cifar100_trial_1",
                   "students/models/S:resnet8_T:resnet8_cifar100_kd_r:0.1_a:0.9_b:0.0_1",
                   "students/models/S:resnet8_T:resnet8_cifar100_crd_r:1.0_a:0.0_b:0.8_1"):
        assert json.loads((save / folder / "summary.json").read_text())["finished"] is True, folder

    assert dry_run("distill", env, capsys) == []  # everything finished: a re-run has nothing to do
    assert summarize.main([str(save), "--out", str(tmp_path / "tables")]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert header == "| method | resnet8→resnet8 |"
    labels = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][2:]
    assert labels == ["teacher", "student (vanilla)", "KD", "CRD"]
    assert plot_curves.main([str(save), "--out", str(tmp_path / "curves")]) == 0
    figure = tmp_path / "curves" / "cifar100_resnet8_to_resnet8.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.rmtree(save)  # the sweep wrote nothing outside SAVE_DIR
    assert list(elsewhere.iterdir()) == []
