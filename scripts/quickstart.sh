#!/usr/bin/env bash
# The main job on the embedded digits data set (no download, two CPU cores, a few minutes):
# train a teacher and a plain student, distil the teacher into the student with KD and with
# two feature methods (CRD, RRD), and print their test accuracies side by side.
# EPOCHS (default 8) and SAVE_DIR (default save/quickstart) change the length and the output folder.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
save="${SAVE_DIR:-$repo/save/quickstart}"
epochs="${EPOCHS:-8}"
teacher=resnet20
student=resnet8
common=(--dataset digits --epochs "$epochs" --lr_decay_epochs "$((epochs * 3 / 4 > 0 ? epochs * 3 / 4 : 1))"
        --batch_size 64 --save_dir "$save" --print_freq 1000 --num_workers 0 --trial qs --resume auto)
# Every method trains with its recommended -r/-a/-b (the defaults); digits has 1437 training
# images, so CRD and RRD get fewer negatives and a shorter queue than the 16384 of CIFAR-100.
# --resume auto: running the quickstart again continues (or skips) what an earlier run saved.
declare -A method_flags=([kd]="" [crd]="--nce_k 1024" [rrd]="--nce_k 1024")

step() { echo "[$(date +%H:%M:%S)] $*"; }
step "teacher $teacher, $epochs epochs on digits"
python "$repo/train_teacher.py" --model "$teacher" "${common[@]}" > /dev/null
step "plain student $student"
python "$repo/train_teacher.py" --model "$student" "${common[@]}" > /dev/null
teacher_ckpt="$save/teachers/models/${teacher}_vanilla_digits_trial_qs/${teacher}_last.pth"
for method in kd crd rrd; do
    step "student $student distilled with $method"
    # shellcheck disable=SC2086
    python "$repo/train_student.py" --path_t "$teacher_ckpt" --model_s "$student" --distill "$method" \
        ${method_flags[$method]} "${common[@]}" > /dev/null
done
echo
python "$repo/scripts/summarize.py" "$save" --runs
