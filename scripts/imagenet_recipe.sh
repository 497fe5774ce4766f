# The ImageNet recipe of SimKD/distillers (METHODS.md §3.5) under torchrun, shared by
# run_imagenet_teacher.sh and run_imagenet_distill.sh (source it; it runs nothing itself):
# total batch 256 split over all processes, 120 epochs, lr 0.1 scaled linearly with the total
# batch, ×0.1 at epochs 30, 60, 90, weight decay 1e-4, momentum 0.9, 32 loader threads per
# machine split over its processes, DALI decoding on the GPU.
#
# Environment (all optional):
#   DATA_ROOT      folder holding train/ and val/ class folders         (default ./data/imagenet)
#   SAVE_DIR       root of every run folder                             (default ./save)
#   NPROC          processes (GPUs) per machine                         (default: the visible GPUs, else 4)
#   NNODES         machines; above 1 also set NODE_RANK and RDZV_ENDPOINT (default 1)
#   NODE_RANK      this machine's number, 0..NNODES-1                   (default 0)
#   RDZV_ENDPOINT  HOST:PORT of the rendezvous, reachable from every machine (required when NNODES > 1)
#   TOTAL_BATCH    images per step over all processes                   (default 256; lr = 0.1 × TOTAL_BATCH / 256)
#   DALI           cpu or gpu                                           (default gpu)
#   TRIAL          the run's trial id                                   (default 0)
#   EXTRA_ARGS     appended to every command, e.g. "--epochs 1 --amp bf16"
#   DRY_RUN=1      print the commands, run nothing
#   TORCHRUN       the launcher command                                 (default torchrun)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data_root="${DATA_ROOT:-./data/imagenet}"
save_dir="${SAVE_DIR:-./save}"
nproc="${NPROC:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}"
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || nproc=4
nnodes="${NNODES:-1}"
total_batch="${TOTAL_BATCH:-256}"
trial="${TRIAL:-0}"
processes=$((nproc * nnodes))
if (( total_batch % processes != 0 )); then
    echo "error: TOTAL_BATCH $total_batch does not split evenly over $processes processes; pick a multiple" >&2
    exit 2
fi
if (( nnodes > 1 )) && [[ -z "${RDZV_ENDPOINT:-}" ]]; then
    echo "error: NNODES=$nnodes needs RDZV_ENDPOINT=HOST:PORT (a port on machine 0 that every machine reaches)" >&2
    exit 2
fi
learning_rate="$(awk -v b="$total_batch" 'BEGIN { printf "%g", 0.1 * b / 256 }')"
read -r -a extra_args <<< "${EXTRA_ARGS:-}"
recipe_args=(--dataset imagenet --data_root "$data_root" --save_dir "$save_dir" --dali "${DALI:-gpu}"
             --batch_size "$((total_batch / processes))" --num_workers "$(((32 + nproc - 1) / nproc))"
             --epochs 120 --learning_rate "$learning_rate" --lr_decay_epochs 30,60,90 --weight_decay 1e-4
             --momentum 0.9 --print_freq 200 --trial "$trial" --resume auto)

# launch RUN_ID SCRIPT ARGS...: one torchrun run of SCRIPT with the recipe (RUN_ID names the
# multi-machine rendezvous, the same on every machine), or its command line with DRY_RUN=1.
launch() {
    local run_id="$1" script="$2"
    shift 2
    local launcher
    read -r -a launcher <<< "${TORCHRUN:-torchrun}"
    launcher+=(--nproc_per_node="$nproc")
    if (( nnodes > 1 )); then
        launcher+=(--nnodes "$nnodes" --node_rank "${NODE_RANK:-0}" --rdzv_backend c10d
                   --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "$run_id")
    else
        launcher+=(--standalone)
    fi
    local command=("${launcher[@]}" "$repo/$script" "$@" "${recipe_args[@]}" "${extra_args[@]}")
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        local word line=""
        for word in "${command[@]}"; do
            [[ "$word" =~ ^[[:alnum:]_./:=,+-]+$ ]] || word="$(printf '%q' "$word")"
            line+="${line:+ }$word"
        done
        echo "$line"
    else
        "${command[@]}"
    fi
}
