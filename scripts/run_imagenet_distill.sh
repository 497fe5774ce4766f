#!/usr/bin/env bash
# Distil the standard ImageNet pairs, ResNet34 -> ResNet18 and ResNet50 -> MobileNetV2, with each
# method of METHODS at its recommended weights, with the SimKD/distillers recipe under torchrun:
# total batch 256 split over the processes, 120 epochs, lr 0.1 (×0.1 at 30, 60, 90), weight
# decay 1e-4, --dali gpu. Runs go to
# SAVE_DIR/students/models/S:<student>_T:<teacher>_imagenet_<method>_r:_a:_b:_<TRIAL>/.
#
#   DATA_ROOT=/data/imagenet NPROC=8 bash scripts/run_imagenet_distill.sh
#   DRY_RUN=1 METHODS=kd,simkd bash scripts/run_imagenet_distill.sh     # print the commands only
#
# Environment:
#   PAIRS          comma list of teacher:student       (default ResNet34:ResNet18,ResNet50_Imagenet:MobileNetV2_Imagenet)
#   METHODS        comma list of methods               (default kd,crd,simkd; other weights: -r/-a/-b in EXTRA_ARGS)
#   TEACHER_DIR    holds <teacher>_vanilla_imagenet_trial_<TEACHER_TRIAL>/<teacher>_best.pth
#                  (run_imagenet_teacher.sh's runs)    (default SAVE_DIR/teachers/models)
#   TEACHER_TRIAL  the teacher run's trial id          (default 0)
# and those of scripts/imagenet_recipe.sh: DATA_ROOT, SAVE_DIR, NPROC, NNODES, NODE_RANK,
# RDZV_ENDPOINT, TOTAL_BATCH, DALI, TRIAL, EXTRA_ARGS, DRY_RUN, TORCHRUN. Every run resumes from
# its latest.pth, so re-running the script after an interruption continues where it stopped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/imagenet_recipe.sh"
teacher_dir="${TEACHER_DIR:-$save_dir/teachers/models}"

pairs="${PAIRS:-ResNet34:ResNet18,ResNet50_Imagenet:MobileNetV2_Imagenet}"
methods="${METHODS:-kd,crd,simkd}"
for pair in ${pairs//,/ }; do
    teacher="${pair%%:*}" student="${pair#*:}"
    path_t="$teacher_dir/${teacher}_vanilla_imagenet_trial_${TEACHER_TRIAL:-0}/${teacher}_best.pth"
    if [[ "${DRY_RUN:-0}" != 1 && ! -f "$path_t" ]]; then
        echo "error: no teacher $path_t; train it with scripts/run_imagenet_teacher.sh or set TEACHER_DIR" >&2
        exit 2
    fi
    for method in ${methods//,/ }; do
        launch "student-$student-$teacher-$method-$trial" train_student.py \
            --path_t "$path_t" --model_s "$student" --distill "$method"
    done
done
