#!/usr/bin/env bash
# The GPU check of this repository, for a machine with one or more GPUs and PyTorch (torch,
# torchvision, numpy, scikit-learn, tensorboard; no DALI, no network needed) and this repository
# unpacked, not pip-installed. Within 460 s (under 8 minutes) on one GPU:
#
#   tests   the tests that skip without CUDA (pytest -k "cuda or gpu");
#   runs    a resnet20 teacher (3 epochs) on small generated CIFAR-100 files, then one epoch of
#           KD and of CRD into resnet8 in fp32, with --amp bf16 --channels_last, with --amp fp16
#           and with --compile: exit status, time and test accuracy of each;
#   gpu_id  --gpu_id N, N the number of GPUs, must hide every GPU (with its note) and leave the
#           run on the CPU; --gpu_id 0 must leave exactly one GPU visible;
#   bench   commands 4 and 5 of docs/BENCHMARKS.md with fewer steps and images.
#
# It always writes the environment and the generated data first and ONE Markdown report, updated
# after every step: the GPU, torch, each step's status, seconds and result, the benchmark tables,
# and the last lines of every failed step. A failed or timed-out step is recorded and the script
# goes on; it exits 1 when any step failed. Every step runs under `timeout`, cut to what is left
# of the budget, so the whole stays within it.
#
#   bash scripts/cuda_check.sh                    # everything; the report is $OUT/cuda_report.md
#   CUDA_CHECK_STEPS=runs,gpu_id bash scripts/cuda_check.sh
#
# Environment:
#   CUDA_CHECK_STEPS     comma-separated steps of the list above (default: all four); "report"
#                        alone runs none of them (environment, data and report only)
#   CUDA_CHECK_BUDGET_S  seconds for the whole script (default 460)
#   CUDA_CHECK_REPORT    the report file (default $OUT/cuda_report.md, else ./cuda_report.md);
#                        the benchmarks' JSON and a tarball of every step's log go beside it
#   CUDA_CHECK_WORK      scratch folder for data, runs and logs (default: a new temporary folder)
#   CUDA_CHECK_PYTHON    the interpreter (default python3, else python)
set -uo pipefail  # no -e: a failed step is recorded, and the next one runs

python="${CUDA_CHECK_PYTHON:-$(command -v python3 || command -v python)}"
steps="${CUDA_CHECK_STEPS:-tests,runs,gpu_id,bench}"
for step in ${steps//,/ }; do
    case $step in
        tests | runs | gpu_id | bench | report) ;;
        *) echo "error: CUDA_CHECK_STEPS names '$step'; use tests, runs, gpu_id, bench or report" >&2; exit 2 ;;
    esac
done
budget="${CUDA_CHECK_BUDGET_S:-460}"
report="$(realpath -m "${CUDA_CHECK_REPORT:-${OUT:+$OUT/}cuda_report.md}")"
work="$(realpath -m "${CUDA_CHECK_WORK:-$(mktemp -d -t cuda_check.XXXXXX)}")"
logs="$work/logs"
report_dir="$(dirname "$report")"

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo" || exit 2
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

mkdir -p "$logs" "$report_dir" || exit 2

started=$SECONDS
failed=0
names=() statuses=() seconds=() details=()

wanted() { [[ ",$steps," == *",$1,"* ]]; }

# One table cell: the first line of $1, with the pipes that would end the cell escaped.
cell() { local text="${1%%$'\n'*}"; printf '%s' "${text//|/\\|}"; }

record() {  # NAME STATUS SECONDS DETAIL
    names+=("$1") statuses+=("$2") seconds+=("$3") details+=("$(cell "$4")")
    [[ $2 == ok ]] || failed=$((failed + 1))
    write_report
}

fail_last() {  # REASON: the last step ran but did not do what it must
    local last=$((${#names[@]} - 1))
    [[ ${statuses[last]} == ok ]] && failed=$((failed + 1))
    statuses[last]="failed: $(cell "$1")"
    write_report
}

detail_last() { details[${#names[@]} - 1]="$(cell "$1")"; write_report; }

# run_step NAME CAP COMMAND...: COMMAND under `timeout` (CAP seconds, or what is left of the
# budget), stdout and stderr to $logs/NAME.out and .err; records the outcome, returns its status.
run_step() {
    local name=$1 cap=$2
    shift 2
    local left=$((budget - (SECONDS - started)))
    if ((left < 15)); then
        record "$name" "skipped: out of time" 0 "the ${budget} s budget is spent"
        return 1
    fi
    ((cap > left)) && cap=$left
    local begin status
    begin=$(date +%s%N)
    timeout --kill-after=10 "$cap" "$@" >"$logs/$name.out" 2>"$logs/$name.err"
    status=$?
    local took
    took=$(awk -v a="$begin" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    case $status in
        0) record "$name" ok "$took" "" ;;
        124 | 137) record "$name" "timed out after ${cap} s" "$took" "$(tail -n 1 "$logs/$name.err")" ;;
        *) record "$name" "failed (exit $status)" "$took" "$(grep -v '^\s*$' "$logs/$name.err" | tail -n 1)" ;;
    esac
    return $status
}

# expect NAME PATTERN...: the last step's output must hold every fixed string PATTERN.
expect() {
    local name=$1 pattern
    shift
    for pattern in "$@"; do
        grep -qF -- "$pattern" "$logs/$name.out" "$logs/$name.err" || { fail_last "no '$pattern' in its output"; return 1; }
    done
}

# The accuracy and speed a run wrote in its summary.json (under the save folder $1).
run_result() {
    "$python" - "$1" <<'EOF'
import json, pathlib, sys
summary = json.loads(next(pathlib.Path(sys.argv[1]).rglob("summary.json")).read_text())
teacher = summary.get("teacher_acc")
print(f"test acc {summary['last_acc']:.2f} % (best {summary['best_acc']:.2f} %), "
      f"{summary['images_per_second']:.0f} img/s" + (f", teacher {teacher:.2f} %" if teacher is not None else ""))
EOF
}

write_report() {
    {
        echo "# CUDA check"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname); steps: $steps; $((SECONDS - started)) of ${budget} s used."
        echo
        echo "- GPU: $gpu_line"
        echo "- $torch_line"
        echo "- work folder: \`$work\`"
        echo
        echo "| step | status | seconds | result |"
        echo "| --- | --- | --- | --- |"
        local i
        for i in "${!names[@]}"; do
            echo "| ${names[i]} | ${statuses[i]} | ${seconds[i]} | ${details[i]} |"
        done
        for i in 4 5; do
            if [[ -s "$logs/benchmark_$i.out" ]]; then
                echo
                echo "## Benchmark command $i (docs/BENCHMARKS.md), fewer steps"
                echo
                cat "$logs/benchmark_$i.out"
            fi
        done
        for i in "${!names[@]}"; do
            if [[ ${statuses[i]} != ok && -s "$logs/${names[i]}.err" ]]; then
                echo
                echo "## ${names[i]}: last lines of its stderr"
                echo
                echo '```'
                tail -n 15 "$logs/${names[i]}.err"
                echo '```'
            fi
        done
    } >"$report"
}

gpu_line="$(nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
    paste -sd ';' -)"
gpu_line="${gpu_line:-nvidia-smi gives none}"
torch_line="torch: not asked yet"

# --- always: the environment and the data --------------------------------------------------------

if run_step environment 60 "$python" -c 'import sys, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"{torch.cuda.device_count()} GPU(s) visible, Python {sys.version.split()[0]}")'; then
    torch_line="$(cat "$logs/environment.out")"
    detail_last "$torch_line"
fi

data="$work/cifar" tiny="$work/tiny_cifar"
run_step data 60 "$python" -c "from tests.fakedata import write_cifar100
write_cifar100('$data', n_train=5000, n_test=1000)
write_cifar100('$tiny', n_train=500, n_test=100, seed=1)" &&
    detail_last "CIFAR-100 layout: $data (5000 + 1000 images), $tiny (500 + 100)"

# --- tests: those that skip without CUDA ---------------------------------------------------------

if wanted tests; then
    run_step cuda_tests 150 "$python" -m pytest -q -rs --continue-on-collection-errors -k "cuda or gpu" tests
    detail_last "$(tail -n 1 "$logs/cuda_tests.out")"
fi

# --- runs: KD and CRD, one epoch, in each precision and with --compile ----------------------------

if wanted runs; then
    common=(--data_root "$data" --batch_size 64 --num_workers 2 --print_freq 1000 --device cuda)
    run_step teacher 120 "$python" train_teacher.py --model resnet20 --epochs 3 --lr_decay_epochs 2 \
        "${common[@]}" --save_dir "$work/teacher" && detail_last "$(run_result "$work/teacher")"
    teacher_ckpt="$work/teacher/teachers/models/resnet20_vanilla_cifar100_trial_0/resnet20_best.pth"
    declare -A variant_flags=([fp32]="" [bf16_cl]="--amp bf16 --channels_last" [fp16]="--amp fp16" [compile]="--compile")
    declare -A method_flags=([kd]="" [crd]="--nce_k 1024")
    for method in kd crd; do
        for variant in fp32 bf16_cl fp16 compile; do
            cap=90
            [[ $variant == compile ]] && cap=150
            # shellcheck disable=SC2086  # the flag strings are lists of words
            run_step "${method}_$variant" "$cap" "$python" train_student.py --path_t "$teacher_ckpt" \
                --model_s resnet8 --distill "$method" --epochs 1 ${method_flags[$method]} ${variant_flags[$variant]} \
                "${common[@]}" --save_dir "$work/runs/${method}_$variant" &&
                detail_last "$(run_result "$work/runs/${method}_$variant")"
        done
    done
fi

# --- gpu_id: --gpu_id must reach CUDA_VISIBLE_DEVICES before CUDA starts -------------------------

if wanted gpu_id; then
    gpus="$(timeout 60 "$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
    # runs an entry script unchanged, then says how many GPUs CUDA showed inside that process
    probe='import atexit, runpy, sys, torch
atexit.register(lambda: print(f"cuda devices inside: {torch.cuda.device_count()}"))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")'
    tiny_run=(train_teacher.py --model resnet8 --data_root "$tiny" --epochs 1 --batch_size 100 --num_workers 0
              --print_freq 1000)
    run_step "gpu_id_${gpus}_hides" 90 "$python" -c "$probe" "${tiny_run[@]}" --gpu_id "$gpus" --save_dir "$work/gpu_id_hidden" &&
        expect "gpu_id_${gpus}_hides" "cuda devices inside: 0" "note: --gpu_id $gpus is ignored" &&
        detail_last "$gpus GPU(s) on the machine; --gpu_id $gpus hid them all, with the note, and ran on the CPU"
    run_step gpu_id_0_shows 90 "$python" -c "$probe" "${tiny_run[@]}" --gpu_id 0 --save_dir "$work/gpu_id_0" &&
        expect gpu_id_0_shows "cuda devices inside: 1" && detail_last "--gpu_id 0 left exactly one GPU visible"
fi

# --- bench: commands 4 and 5 of docs/BENCHMARKS.md, fewer steps ----------------------------------

if wanted bench; then
    bench=("$python" scripts/benchmark.py --teacher resnet32x4 --student resnet8x4 --loader fast --batch_size 64
           --device cuda --num_images 10000)
    run_step benchmark_4 200 "${bench[@]}" --methods kd --variants fp32,bf16+cl,bf16+cl+compile \
        --warmup 20 --steps 100 --repeats 2 --json "$report_dir/gpu_kd.json" &&
        detail_last "warm-up 20, best of 2 × 100 steps (the doc: 50, 3 × 300); tables below"
    run_step benchmark_5 400 "${bench[@]}" --methods all --variants bf16+cl+compile \
        --warmup 10 --steps 30 --repeats 1 --json "$report_dir/gpu_methods.json" &&
        detail_last "warm-up 10, 1 × 30 steps (the doc: 50, 3 × 200); tables below"
fi

tar -czf "$report_dir/cuda_check_logs.tar.gz" -C "$work" logs 2>/dev/null
write_report
echo "$report: ${#names[@]} steps, $failed failed"
((failed == 0))
