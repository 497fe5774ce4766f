#!/usr/bin/env bash
# The main job on the embedded digits data set (no download, two CPU cores, a few minutes):
# train a teacher and a plain student, distil the teacher into the student with KD and with
# two feature methods (CRD, RRD) as one pack per seed (one process, one teacher pass per batch),
# three seeds, and print each method's test accuracy as mean ± std over the seeds.
# EPOCHS (default 8) and SAVE_DIR (default save/quickstart) change the length and the output folder.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
save="${SAVE_DIR:-$repo/save/quickstart}"
epochs="${EPOCHS:-8}"
teacher=resnet20
student=resnet8
seeds=(1 2 3)
common=(--dataset digits --epochs "$epochs" --lr_decay_epochs "$((epochs * 3 / 4 > 0 ? epochs * 3 / 4 : 1))"
        --batch_size 64 --save_dir "$save" --print_freq 1000 --num_workers 0 --resume auto)
# --resume auto: running the quickstart again continues (or skips) what an earlier run saved.

step() { echo "[$(date +%H:%M:%S)] $*"; }
step "teacher $teacher, $epochs epochs on digits"
python "$repo/train_teacher.py" --model "$teacher" --trial qs "${common[@]}" > /dev/null
step "plain student $student"
python "$repo/train_teacher.py" --model "$student" --trial qs "${common[@]}" > /dev/null
teacher_ckpt="$save/teachers/models/${teacher}_vanilla_digits_trial_qs/${teacher}_last.pth"
# Every method trains with its recommended -r/-a/-b (the defaults). Digits has 1437 training
# images, so CRD's negatives and RRD's queue (both --nce_k) are 1024, not CIFAR-100's 16384.
for seed in "${seeds[@]}"; do
    step "student $student distilled with kd, crd and rrd (one pack), seed $seed"
    python "$repo/train_student.py" --path_t "$teacher_ckpt" --model_s "$student" --distill kd,crd,rrd \
        --nce_k 1024 --seed "$seed" --trial "qs$seed" "${common[@]}" > /dev/null
done
echo
python "$repo/scripts/summarize.py" "$save" --runs
