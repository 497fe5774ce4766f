#!/usr/bin/env bash
# Distil every method on every standard CIFAR-100 teacher->student pair (METHODS.md §4) with the
# method's recommended weights (its registry entry, "+KD" rows with -a 1), TRIALS times each.
# Methods that cannot run on a pair (FSP and KDSVD need equal channel counts) are skipped with a
# note. Runs go to SAVE_DIR/students/models/S:<student>_T:<teacher>_cifar100_<method>_r:_a:_b:_<t>/;
# summarise them with: python scripts/summarize.py "$SAVE_DIR" [--compare].
#
# Environment (all optional):
#   DATA_ROOT      folder holding cifar-100-python/                   (default ./data)
#   SAVE_DIR       root of every run folder                           (default ./save)
#   GPUS           passed as --gpu_id                                 (default: all visible)
#   TEACHER_DIR    where teacher checkpoints are looked up: <arch>_vanilla_cifar100_trial_<TEACHER_TRIAL>/<arch>_last.pth
#                  (this repository), <arch>_vanilla/ckpt_epoch_240.pth (RepDistiller's released
#                  teachers) or <arch>_vanilla/<arch>_best.pth (SimKD's)   (default SAVE_DIR/teachers/models)
#   TEACHER_TRIAL  which trial of run_cifar_vanilla.sh serves as teacher (default 1)
#   PAIRS          comma list of teacher:student; a non-standard pair runs as given (default: the standard pairs)
#   METHODS        comma list of rows: methods (names or aliases), crd+kd, rrd+kd, dcd+kd for the +KD rows,
#                  kd+ls, dkd+ls, ctkd+ls, mlkd+ls (logit standardisation) and kd+dot (the DOT optimiser)
#   TRIALS         trials per run, numbered 1..TRIALS, seed = trial   (default 3)
#   EXTRA_ARGS     appended to every command, e.g. "--epochs 1 --nce_k 4096"; flags the sweep sets itself
#                  (--trial, --seed, --distill, -r/-a/-b, --model_s, --model_t, --path_t, --dataset,
#                  --data_root, --save_dir, --resume, --gpu_id with GPUS) are refused: use the variables above
#   PACK           at most this many runs per train_student.py command; the rows of one pair and
#                  trial share one teacher pass (default: every row of the pair; 1: one run per command)
#   DRY_RUN=1      print the commands, run nothing
#   PYTHON         the interpreter                                    (default python)
# Arguments go to scripts/sweep.py and choose where the commands run (docs/REPRODUCING.md):
#   bash scripts/run_cifar_distill.sh --gpus 0,1,2,3 --runs_per_gpu 2     # this machine's GPUs
#   bash scripts/run_cifar_distill.sh --launcher slurm --partition gpu --time 240 --array_parallelism 16
# Runs whose summary.json says "finished": true are skipped and every run resumes from its own
# latest.pth, so re-running this script after an interruption continues the sweep.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python}" "$repo/scripts/sweep.py" distill "$@"
