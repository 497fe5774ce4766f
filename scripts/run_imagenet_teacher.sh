#!/usr/bin/env bash
# Train the ImageNet teachers of the standard pairs (ResNet34 for ResNet18, ResNet50 for
# MobileNetV2) with the SimKD/distillers recipe under torchrun: total batch 256 split over the
# processes, 120 epochs, lr 0.1 (×0.1 at 30, 60, 90), weight decay 1e-4, --dali gpu.
# Runs go to SAVE_DIR/teachers/models/<model>_vanilla_imagenet_trial_<TRIAL>/, where
# run_imagenet_distill.sh finds them (<model>_best.pth).
#
#   DATA_ROOT=/data/imagenet NPROC=8 bash scripts/run_imagenet_teacher.sh
#   DRY_RUN=1 bash scripts/run_imagenet_teacher.sh                 # print the commands only
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29400 bash scripts/run_imagenet_teacher.sh   # on node0,
#   NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=node0:29400 bash scripts/run_imagenet_teacher.sh   # and on node1
#
# Environment: TEACHERS (comma list of models, default "ResNet34,ResNet50_Imagenet") and those
# of scripts/imagenet_recipe.sh: DATA_ROOT, SAVE_DIR, NPROC, NNODES, NODE_RANK, RDZV_ENDPOINT,
# TOTAL_BATCH, DALI, TRIAL, EXTRA_ARGS, DRY_RUN, TORCHRUN. Every run resumes from its latest.pth,
# so re-running the script after an interruption continues where it stopped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/imagenet_recipe.sh"

teachers="${TEACHERS:-ResNet34,ResNet50_Imagenet}"
for model in ${teachers//,/ }; do
    launch "teacher-$model-$trial" train_teacher.py --model "$model"
done
