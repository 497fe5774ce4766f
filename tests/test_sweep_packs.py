"""scripts/sweep.py's packs and scripts/launchers.py: which runs share a command, and where commands run."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from helper import run_names
from helper.driver import run_name
from helper.options import parse_student_args
from helper.pack_args import member_argvs
from scripts import launchers, sweep
from scripts.launchers import Command, LocalLauncher, PackJob
from scripts.table_rows import method_rows, row_weights

PLAIN = "kd,fitnet,at,crd,crd+kd"  # five rows without flags of their own
ROWS = {row.key: row for row in method_rows()}


@pytest.fixture
def env(tmp_path):
    """A distill sweep of one pair whose teacher is where the sweep looks (RepDistiller's layout)."""
    teacher = tmp_path / "teachers" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    teacher.parent.mkdir(parents=True)
    teacher.touch()
    return {"PAIRS": "resnet8:resnet8", "METHODS": PLAIN, "TRIALS": "1", "TEACHER_DIR": str(tmp_path / "teachers"),
            "SAVE_DIR": str(tmp_path / "save"), "PYTHON": "python"}


def plan(env: dict[str, str], **config) -> list[Command]:
    return sweep.distill_plan(sweep.SweepConfig.from_env({**env, **config})).commands


def methods_of(command: Command) -> list[str]:
    """Each member's row key, told from its solo command line."""
    keys = []
    for member in member_argvs(command.argv[2:]):
        opt = parse_student_args(member)
        keys.append(opt.distill + ("+kd" if opt.distill == "crd" and opt.alpha == 1.0 else ""))
    return keys


def finish(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"finished": True}))


def test_the_plain_rows_of_a_pair_and_trial_are_one_pack_with_each_members_weights(env):
    commands = plan(env, TRIALS="2")
    assert len(commands) == 2  # one pack per trial
    for trial, command in enumerate(commands, 1):
        members = [parse_student_args(argv) for argv in member_argvs(command.argv[2:])]
        assert methods_of(command) == ["kd", "hint", "attention", "crd", "crd+kd"]  # the papers' order
        keys = ["kd", "hint", "attention", "crd", "crd+kd"]
        assert [(opt.gamma, opt.alpha, opt.beta) for opt in members] == [row_weights(ROWS[key]) for key in keys]
        assert {opt.trial for opt in members} == {str(trial)} and {opt.seed for opt in members} == {trial}
        folders = tuple(run_names.run_dir(opt.save_dir, run_names.DISTILLED, run_name(opt, "resnet8"))
                        for opt in members)
        assert command.run_dirs == folders  # the folders the sweep checks are the ones the members write
    argv = list(commands[0].argv)
    assert argv[argv.index("--distill") + 1] == "kd,hint,attention,crd,crd"
    assert argv[argv.index("-a") + 1] == "0.9,0.0,0.0,0.0,1.0"


@pytest.mark.parametrize("size, expected", [("1", [1, 1, 1, 1, 1]), ("2", [2, 2, 1]), ("5", [5]), ("9", [5])])
def test_pack_caps_the_members_of_a_command(env, size, expected):
    commands = plan(env, PACK=size)
    assert [len(command.run_dirs) for command in commands] == expected
    assert [key for command in commands for key in methods_of(command)] == ["kd", "hint", "attention", "crd", "crd+kd"]
    if size == "1":  # a one-member pack is today's solo command line
        assert member_argvs(commands[0].argv[2:]) == [list(commands[0].argv[2:])]


def test_rows_with_flags_of_their_own_are_packed_apart(env):
    commands = plan(env, METHODS="kd,kd+ls,dkd+ls,ctkd+ls,kd+dot,dkd")
    flags = [shlex.join(command.argv[command.argv.index("-b") + 2:command.argv.index("--dataset")])
             for command in commands]
    assert flags == ["", "--logit_stand --kd_T 2", "--logit_stand", "--optimizer dot"]
    assert [methods_of(command) for command in commands] == [["kd", "dkd"], ["kd", "dkd"], ["ctkd"], ["kd"]]
    weights = [parse_student_args(member).beta for member in member_argvs(commands[1].argv[2:])]
    assert weights == [0.0, 9.0]  # KD+LS and DKD+LS keep their rows' weights


def test_finished_members_are_left_out_of_their_pack(env):
    first = plan(env, TRIALS="2")
    for run_dir in (first[0].run_dirs[1], first[0].run_dirs[3], *first[1].run_dirs):
        finish(run_dir)
    (first[0].run_dirs[0]).mkdir(parents=True)  # started, not finished: it stays (and resumes)
    (first[0].run_dirs[0] / "summary.json").write_text(json.dumps({"finished": False}))
    (command,) = plan(env, TRIALS="2")
    assert methods_of(command) == ["kd", "attention", "crd+kd"]
    assert command.run_dirs == (first[0].run_dirs[0], first[0].run_dirs[2], first[0].run_dirs[4])


def test_a_pack_size_from_the_flag_wins_over_pack(env, capsys):
    assert sweep.main(["distill", "--pack", "2", "--dry_run"], {**env, "PACK": "4"}) == 0
    out, err = capsys.readouterr()
    assert [len(member_argvs(shlex.split(line)[2:])) for line in out.splitlines()] == [2, 2, 1]
    assert err.splitlines()[-1] == "3 command(s), 5 run(s)"


def test_the_dry_run_prints_each_packs_line_and_the_counts(env, capsys):
    assert sweep.main(["distill"], {**env, "TRIALS": "2", "DRY_RUN": "1"}) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(command) for command in plan(env, TRIALS="2")]
    assert err.splitlines() == ["2 command(s), 10 run(s)"]
    assert sweep.main(["vanilla", "--dry_run"], env) == 0  # teacher runs are never packed
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and err.splitlines() == ["1 command(s), 1 run(s)"]
    assert not (Path(env["SAVE_DIR"])).exists()  # a dry run writes nothing


def test_the_slurm_dry_run_prints_the_array_and_submits_nothing(env, capsys, monkeypatch):
    monkeypatch.setattr(launchers.SlurmLauncher, "launch", lambda *args: pytest.fail("submitted"))
    flags = ["--launcher", "slurm", "--partition", "gpu", "--time", "90", "--gpus_per_job", "4",
             "--array_parallelism", "8", "--mem_gb", "32"]
    assert sweep.main(["distill", "--dry_run", *flags], {**env, "PACK": "2"}) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3
    assert f"slurm: one job array of 3 job(s), logs in {env['SAVE_DIR']}/slurm; each command under torchrun on 4 " \
           "GPUs; name=kd_sweep slurm_partition=gpu timeout_min=90" in err
    assert "gpus_per_node=4 slurm_array_parallelism=8 mem_gb=32.0" in err
    assert not (Path(env["SAVE_DIR"])).exists()


@pytest.mark.parametrize("flags, environment, message", [
    (["--partition", "p"], {}, "--partition needs --launcher slurm"),
    (["--time", "5", "--wait"], {}, "--time --wait need --launcher slurm"),
    (["--runs_per_gpu", "2"], {}, "--runs_per_gpu needs --gpus"),
    (["--gpus", "0,1", "--runs_per_gpu", "0"], {}, "--runs_per_gpu 0 must be positive"),
    (["--gpus", "0,0"], {}, "--gpus '0,0' must list distinct GPU numbers"),
    (["--gpus", "0,x"], {}, "--gpus '0,x' must list distinct GPU numbers"),
    (["--gpus", "1"], {"GPUS": "0"}, "GPUS=0 and --gpus 1 both choose GPUs; unset GPUS"),
    (["--pack", "0"], {}, "--pack 0 must be positive"),
    (["--pack", "two"], {}, "argument --pack: invalid int value: 'two'"),
    ([], {"PACK": "0"}, "PACK='0' must be a positive integer"),
    (["--launcher", "pbs"], {}, "argument --launcher: invalid choice: 'pbs'"),
    (["--launcher", "slurm", "--time", "10"], {}, "--launcher slurm needs --partition"),
    (["--launcher", "slurm"], {}, "--launcher slurm needs --partition and --time"),
    (["--launcher", "slurm", "--partition", "p", "--time", "0"], {}, "--time 0 must be positive"),
    (["--launcher", "slurm", "--partition", "p", "--time", "5", "--gpus_per_job", "-1"], {},
     "--gpus_per_job -1 must be 0 (a CPU cluster) or more"),
    (["--launcher", "slurm", "--partition", "p", "--time", "5", "--array_parallelism", "-2"], {},
     "--array_parallelism -2 must be positive"),
    (["--launcher", "slurm", "--partition", "p", "--time", "5", "--mem_gb", "nan"], {},
     "--mem_gb nan must be positive"),
    (["--launcher", "slurm", "--partition", "p", "--time", "5", "--gpus", "0"], {}, "--gpus is for --launcher local"),
    (["--launcher", "slurm", "--partition", "p", "--time", "5"], {"GPUS": "1"}, "GPUS=1 is for the local launcher"),
])
def test_a_bad_flag_combination_is_one_line_and_exit_2(flags, environment, message, env, capsys):
    assert sweep.main(["distill", *flags], {**env, **environment}) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert message in err
    assert not (Path(env["SAVE_DIR"])).exists()


def test_pack_is_refused_for_the_vanilla_sweep(env, capsys):
    assert sweep.main(["vanilla", "--pack", "2"], env) == 2
    assert capsys.readouterr().err == "error: --pack is for the distill sweep; teacher runs are not packed\n"


# ---------------------------------------------------------------------------------------------
# The local pool, with fake commands: small Python programs that record what they saw.

RECORD = """
import os, pathlib, sys, time
folder, number = pathlib.Path(sys.argv[1]), sys.argv[2]
gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "none")
me = folder / f"running_{gpu}_{number}"
me.touch()
time.sleep(0.3)
together = len(list(folder.glob(f"running_{gpu}_*")))
time.sleep(0.3)
me.unlink()
(folder / f"done_{number}").write_text(f"{gpu} {together}")
print("output of", number)
"""


def fake_commands(folder: Path, count: int, code: str = RECORD) -> list[Command]:
    return [Command((sys.executable, "-c", code, str(folder), str(number)), (folder / f"run_{number}",))
            for number in range(count)]


def seen(folder: Path, count: int) -> list[tuple[str, int]]:
    """(GPU, how many ran on it at once) as each fake command recorded them."""
    return [(gpu, int(together)) for gpu, together in
            (((folder / f"done_{number}").read_text().split()) for number in range(count))]


@pytest.mark.parametrize("gpus, per_gpu", [(("0", "1"), 2), (("3",), 3), (("0", "1", "2"), 1)])
def test_the_pool_runs_per_gpu_commands_at_a_time_on_each_gpu(tmp_path, gpus, per_gpu, capsys):
    count = 2 * len(gpus) * per_gpu + 1
    launcher = LocalLauncher(gpus, per_gpu, tmp_path / "logs")
    assert launcher.launch(fake_commands(tmp_path, count), blocked=0) == 0
    records = seen(tmp_path, count)
    assert {gpu for gpu, _ in records} == set(gpus)  # every GPU used, and only those
    assert max(together for _, together in records) == per_gpu  # full, never more
    for gpu in gpus:
        assert sum(record == gpu for record, _ in records) >= 2  # the work is shared out
    assert (tmp_path / "logs" / "run_0.log").read_text() == "output of 0\n"
    out, err = capsys.readouterr()
    assert out.count("output: ") == count and err.splitlines()[-1] == f"{count} of {count} command(s) succeeded"


def test_without_gpus_commands_run_one_after_another_on_the_terminal(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert LocalLauncher().launch(fake_commands(tmp_path, 3), blocked=0) == 0
    assert seen(tmp_path, 3) == [("none", 1)] * 3
    out, err = capfd.readouterr()
    assert "output of 2" in out and not (tmp_path / "logs").exists()
    assert "[1/3] " in out and err.splitlines()[-1] == "3 of 3 command(s) succeeded"


FAIL_SOME = """
import json, pathlib, sys
folder, number = pathlib.Path(sys.argv[1]), int(sys.argv[2])
print("working on", number)
if number == 1:
    print("Traceback: something broke", file=sys.stderr)
    sys.exit(5)
if number == 2:  # a pack whose second member stopped on a non-finite loss
    (folder / "run_2").mkdir()
    (folder / "run_2" / "summary.json").write_text(json.dumps({"finished": True}))
    sys.exit(3)
"""


def test_a_failed_command_is_reported_with_its_unfinished_runs_and_the_rest_goes_on(tmp_path, capsys):
    commands = fake_commands(tmp_path, 4, FAIL_SOME)
    commands[2] = Command(commands[2].argv, (tmp_path / "run_2", tmp_path / "run_2b"))
    assert LocalLauncher(("0",), 1, tmp_path / "logs").launch(commands, blocked=2) == 1
    err = capsys.readouterr().err
    assert "failed: run_1: failed (exit status 5); unfinished: run_1; the end of" in err
    assert "Traceback: something broke" in err  # the end of its log
    assert "failed: run_2 (+1 more): a run stopped on a non-finite loss (exit status 3); unfinished: run_2b" in err
    assert err.splitlines()[-1] == "2 of 4 command(s) succeeded; 2 run(s) not started for want of a teacher"
    assert (tmp_path / "logs" / "run_3.log").read_text() == "working on 3\n"


def test_a_command_that_cannot_start_is_reported_and_the_rest_goes_on(tmp_path, capsys):
    commands = fake_commands(tmp_path, 2)
    commands[0] = Command((str(tmp_path / "no_such_python"), "-c", "pass"), (tmp_path / "run_0",))
    assert LocalLauncher().launch(commands, blocked=0) == 1
    err = capsys.readouterr().err
    assert "failed: run_0: could not start: [Errno 2] No such file or directory" in err
    assert (tmp_path / "done_1").exists() and err.splitlines()[-1] == "1 of 2 command(s) succeeded"


STOPPABLE = """
import os, pathlib, signal, sys, time
folder, number = pathlib.Path(sys.argv[1]), sys.argv[2]
def stop(signum, frame):
    with open(folder / f"stopped_{number}", "a") as file:
        file.write(signal.Signals(signum).name + "\\n")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
(folder / f"started_{number}").write_text(str(os.getsid(0) == os.getpid()))
time.sleep(30)
"""


def wait_for(paths: list[Path], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in paths):
        assert time.monotonic() < deadline, f"waited for {paths}"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_sweep_stops_the_running_commands_once_and_starts_no_more(tmp_path, signum, capsys):
    started = [tmp_path / "started_0", tmp_path / "started_1"]
    before = signal.getsignal(signum)

    def stop_the_sweep() -> None:
        wait_for(started)
        os.kill(os.getpid(), signum)

    stopper = threading.Thread(target=stop_the_sweep)
    stopper.start()
    status = LocalLauncher(("0", "1"), 1, tmp_path / "logs").launch(fake_commands(tmp_path, 4, STOPPABLE), blocked=0)
    stopper.join()
    assert status == 128 + signum
    assert [path.read_text() for path in started] == ["True", "True"]  # own sessions: a Ctrl-C reaches only the sweep
    assert [(tmp_path / f"stopped_{number}").read_text() for number in (0, 1)] == ["SIGTERM\n"] * 2  # one each
    assert not (tmp_path / "started_2").exists() and not (tmp_path / "started_3").exists()
    assert signal.getsignal(signum) is before  # the sweep's handlers are gone again
    err = capsys.readouterr().err
    assert "stopping 2 running command(s) after they save" in err and "run the sweep again to resume" in err
    assert "0 of 4 command(s) succeeded, 2 not started" in err


# ---------------------------------------------------------------------------------------------
# A Slurm job's callable, outside Slurm.


def test_a_pack_job_runs_its_command_and_returns_its_run_folders(tmp_path, capsys):
    code = "import signal; print('usr2 ignored:', signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN)"
    job = PackJob([sys.executable, "-c", code], [tmp_path / "a", tmp_path / "b"])
    assert job() == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert "usr2 ignored: True" in capsys.readouterr().out  # Slurm's warning is the job's to act on


def test_a_failed_pack_job_raises_with_its_status_and_the_end_of_its_output(tmp_path):
    finish(tmp_path / "a")
    code = "import sys; print('\\n'.join(f'line {n}' for n in range(100))); sys.exit(7)"
    job = PackJob([sys.executable, "-c", code], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(RuntimeError) as failure:
        job()
    message = str(failure.value)
    assert message.startswith("the command exited with status 7; unfinished runs: b; the end of its output:")
    assert "line 99" in message and "line 59\n" not in message  # the last 40 lines


def test_several_gpus_run_the_command_under_torchrun():
    argv = ["/env/bin/python", "/repo/train_student.py", "--distill", "kd,crd"]
    assert PackJob(argv, ["run"], gpus=4).command() == [
        "/env/bin/python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
        "/repo/train_student.py", "--distill", "kd,crd"]
    assert PackJob(argv, ["run"], gpus=1).command() == argv == PackJob(argv, ["run"], gpus=0).command()


def test_checkpoint_stops_the_command_after_it_saves_and_resubmits_the_job(tmp_path, monkeypatch):
    from submitit.helpers import DelayedSubmission

    monkeypatch.setattr(PackJob, "KILLED_WAIT_S", 0.0)
    job = PackJob([sys.executable, "-c", STOPPABLE, str(tmp_path), "0"], [tmp_path / "run"])
    outcome = []

    def run_the_job() -> None:
        try:
            job()
        except RuntimeError as error:
            outcome.append(str(error))

    runner = threading.Thread(target=run_the_job)
    runner.start()  # in Slurm, checkpoint() runs in the job's signal handler while __call__ waits
    wait_for([tmp_path / "started_0"])
    delayed = job.checkpoint()
    assert (tmp_path / "stopped_0").read_text() == "SIGTERM\n"  # it had saved when checkpoint() returned
    runner.join(timeout=20)
    assert "status 143 after a SIGTERM" in outcome[0]
    assert isinstance(delayed, DelayedSubmission) and delayed.function is job
    delayed.dump(tmp_path / "submitted.pkl")
    again = DelayedSubmission.load(tmp_path / "submitted.pkl").function
    assert (again.argv, again.run_dirs, again.gpus) == (job.argv, job.run_dirs, 1)
    assert again._process is None and "_process" not in pickle.loads(pickle.dumps(job)).__getstate__()
