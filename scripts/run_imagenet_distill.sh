#!/usr/bin/env bash
# Distil on ImageNet under torchrun, with one of two protocols (PROTOCOL):
#
#   simkd (default)  the standard pairs ResNet34 -> ResNet18 and ResNet50 -> MobileNetV2, teachers
#                    trained here by run_imagenet_teacher.sh, with the SimKD/distillers recipe:
#                    total batch 256 split over the processes, 120 epochs, lr 0.1 (×0.1 at 30, 60,
#                    90), weight decay 1e-4; methods kd,crd,simkd at their recommended weights.
#   torchvision      the protocol of the CRD, ReviewKD, DKD, DIST and mmrazor tables (published
#                    numbers in docs/REPRODUCING.md): torchvision's pretrained ResNet34 (73.31%) ->
#                    ResNet18, the same recipe for 100 epochs; methods kd,crd,reviewkd,dkd,dist,
#                    each with its papers' ImageNet settings (METHOD_ARGS below). The teacher is
#                    torchvision's own file resnet34-b627a593.pth, loaded into the zoo's ResNet34
#                    (torchvision's layout, so every method's taps exist); it is downloaded once,
#                    before the runs start, unless TEACHER_WEIGHTS names a copy.
#
# Runs go to SAVE_DIR/students/models/S:<student>_T:<teacher>_imagenet_<method>_r:_a:_b:_<TRIAL>/.
#
#   DATA_ROOT=/data/imagenet NPROC=8 bash scripts/run_imagenet_distill.sh
#   PROTOCOL=torchvision DATA_ROOT=/data/imagenet NPROC=8 bash scripts/run_imagenet_distill.sh
#   DRY_RUN=1 METHODS=kd,simkd bash scripts/run_imagenet_distill.sh     # print the commands only
#
# Environment:
#   PROTOCOL        simkd or torchvision                    (default simkd)
#   PAIRS           comma list of teacher:student           (simkd only; default ResNet34:ResNet18,ResNet50_Imagenet:MobileNetV2_Imagenet)
#   METHODS         comma list of methods                   (default kd,crd,simkd / kd,crd,reviewkd,dkd,dist)
#   TEACHER_DIR     holds <teacher>_vanilla_imagenet_trial_<TEACHER_TRIAL>/<teacher>_best.pth
#                   (simkd; run_imagenet_teacher.sh's runs)  (default SAVE_DIR/teachers/models)
#   TEACHER_TRIAL   the teacher run's trial id              (default 0)
#   TEACHER_WEIGHTS torchvision's ResNet34 file             (torchvision; default TORCH_HOME's hub copy)
#   DALI            cpu, gpu, or none for the torchvision loader (default gpu)
# and those of scripts/imagenet_recipe.sh: DATA_ROOT, SAVE_DIR, NPROC, NNODES, NODE_RANK,
# RDZV_ENDPOINT, TOTAL_BATCH, TRIAL, EXTRA_ARGS, DRY_RUN, TORCHRUN. Every run resumes from its
# latest.pth, so re-running the script after an interruption continues where it stopped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/imagenet_recipe.sh"
teacher_dir="${TEACHER_DIR:-$save_dir/teachers/models}"
protocol="${PROTOCOL:-simkd}"

# set_recipe_flag FLAG [VALUE]: give the recipe's FLAG the value VALUE, or drop it without one.
set_recipe_flag() {
    local kept=() i
    for ((i = 0; i < ${#recipe_args[@]}; i++)); do
        if [[ "${recipe_args[i]}" == "$1" ]]; then
            ((i += 1))
            (($# > 1)) && kept+=("$1" "$2")
        else
            kept+=("${recipe_args[i]}")
        fi
    done
    recipe_args=("${kept[@]}")
}
if [[ "${DALI:-gpu}" == none ]]; then
    set_recipe_flag --dali
fi

# The ImageNet settings of each method's papers (torchvision protocol): KD as mdistiller (T 1,
# 0.5/0.5), ReviewKD without warm-up and with pre-ReLU student taps, DKD α 0.5 β 0.5 T 1 with a
# one-epoch warm-up (mdistiller), DIST τ 1; CRD at its recommended weights.
declare -A METHOD_ARGS=(
    [kd]="-r 0.5 -a 0.5 --kd_T 1"
    [crd]=""
    [reviewkd]="-b 1 --reviewkd_warmup 0 --reviewkd_student_taps preact"
    [dkd]="--dkd_alpha 0.5 --dkd_beta 0.5 --kd_T 1 --dkd_warmup 1"
    [dist]="-b 1 --dist_tau 1"
)

distil() {  # distil TEACHER STUDENT PATH_T METHODS [ARGS...]: one run per method
    local teacher="$1" student="$2" path_t="$3" methods="$4" method
    shift 4
    for method in ${methods//,/ }; do
        local method_args=()
        read -r -a method_args <<< "${METHOD_ARGS[$method]:-}"
        [[ "$protocol" == torchvision ]] || method_args=()
        launch "student-$student-$teacher-$method-$trial" train_student.py \
            --path_t "$path_t" --model_s "$student" --distill "$method" "$@" "${method_args[@]}"
    done
}

case "$protocol" in
simkd)
    pairs="${PAIRS:-ResNet34:ResNet18,ResNet50_Imagenet:MobileNetV2_Imagenet}"
    for pair in ${pairs//,/ }; do
        teacher="${pair%%:*}" student="${pair#*:}"
        path_t="$teacher_dir/${teacher}_vanilla_imagenet_trial_${TEACHER_TRIAL:-0}/${teacher}_best.pth"
        if [[ "${DRY_RUN:-0}" != 1 && ! -f "$path_t" ]]; then
            echo "error: no teacher $path_t; train it with scripts/run_imagenet_teacher.sh or set TEACHER_DIR" >&2
            exit 2
        fi
        distil "$teacher" "$student" "$path_t" "${METHODS:-kd,crd,simkd}"
    done
    ;;
torchvision)
    set_recipe_flag --epochs 100
    weights="${TEACHER_WEIGHTS:-${TORCH_HOME:-$HOME/.cache/torch}/hub/checkpoints/resnet34-b627a593.pth}"
    if [[ "${DRY_RUN:-0}" != 1 && ! -f "$weights" ]]; then
        echo "downloading torchvision's ResNet34 weights to $weights" >&2
        TORCH_HOME="$(dirname "$(dirname "$(dirname "$weights")")")" "${PYTHON:-python}" -c \
            "import torchvision; torchvision.models.resnet34(weights='IMAGENET1K_V1')"
    fi
    distil ResNet34 ResNet18 "$weights" "${METHODS:-kd,crd,reviewkd,dkd,dist}" --model_t ResNet34
    ;;
*)
    echo "error: PROTOCOL must be simkd or torchvision, not $protocol" >&2
    exit 2
    ;;
esac
