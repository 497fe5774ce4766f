#!/usr/bin/env bash
# The main job on the embedded digits data set (no download, two CPU cores, a few minutes):
# train a teacher and a plain student, distil the teacher into the student with KD and with
# feature methods, and print their test accuracies side by side.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
save="${SAVE_DIR:-$repo/save/quickstart}"
epochs="${EPOCHS:-10}"
teacher=resnet32x4
student=resnet8
common=(--dataset digits --epochs "$epochs" --lr_decay_epochs "$((epochs * 3 / 4))" --batch_size 64
        --save_dir "$save" --print_freq 1000 --num_workers 0 --trial qs)

python "$repo/train_teacher.py" --model "$teacher" "${common[@]}" > /dev/null
python "$repo/train_teacher.py" --model "$student" "${common[@]}" > /dev/null
teacher_ckpt="$save/teachers/models/${teacher}_vanilla_digits_trial_qs/${teacher}_last.pth"
for method in kd crd rrd; do
    python "$repo/train_student.py" --path_t "$teacher_ckpt" --model_s "$student" --distill "$method" \
        "${common[@]}" > /dev/null
done
python "$repo/scripts/summarize.py" "$save" --runs
