#!/usr/bin/env bash
# Train every teacher and every student network of the standard CIFAR-100 pairs (METHODS.md §4,
# same- and cross-architecture tables) from scratch with cross-entropy, TRIALS times each: the
# "teacher" and "student (vanilla)" rows of the tables, and the teachers run_cifar_distill.sh uses
# (trial 1, last epoch). Runs go to SAVE_DIR/teachers/models/<model>_vanilla_cifar100_trial_<t>/.
#
# Environment (all optional):
#   DATA_ROOT   folder holding cifar-100-python/                      (default ./data)
#   SAVE_DIR    root of every run folder                              (default ./save)
#   GPUS        passed as --gpu_id                                    (default: all visible)
#   PAIRS       comma list of teacher:student; trains only their networks (default: the standard pairs)
#   TRIALS      trials per network, numbered 1..TRIALS, seed = trial  (default 3)
#   EXTRA_ARGS  appended to every command, e.g. "--epochs 1"; flags only train_student.py knows are dropped,
#               and flags the sweeps set themselves (--trial, --seed, --model, --distill, -r/-a/-b, --dataset,
#               --data_root, --save_dir, --resume, --gpu_id with GPUS) are refused: use the variables above
#   DRY_RUN=1   print the commands, run nothing
#   PYTHON      the interpreter                                       (default python)
# Arguments go to scripts/sweep.py and choose where the runs go: --gpus 0,1 --runs_per_gpu 2 on
# this machine's GPUs, --launcher slurm --partition P --time MIN as a Slurm job array (docs/REPRODUCING.md).
# Runs whose summary.json says "finished": true are skipped and every run resumes from its own
# latest.pth, so re-running this script after an interruption continues the sweep.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python}" "$repo/scripts/sweep.py" vanilla "$@"
