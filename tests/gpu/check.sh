#!/usr/bin/env bash
# The GPU check (issue 37): one short script for a machine with CUDA GPUs, under 8 minutes on one H100, so
# that it can run twice in a 15-minute budget. From the repository root, in the project's venv:
#   bash tests/gpu/check.sh                        # the GPU tests; gpu_figures.json, and a summary at the end
#   FULL=1 bash tests/gpu/check.sh                 # then the whole suite on this machine (much longer)
#   GPU_CHECK_DEVICE=cpu bash tests/gpu/check.sh   # the rehearsal: the same tests on the CPU, gloo for NCCL
# No `set -e`: a failing test must not stop the figures and the summary; the exit status says if all passed.
set -uo pipefail
cd "$(dirname "$0")/../.."
export GPU_FIGURES="${GPU_FIGURES:-$PWD/gpu_figures.json}" GPU_CHECK_DEVICE="${GPU_CHECK_DEVICE:-cuda}"
[ "$GPU_CHECK_DEVICE" = cpu ] && export TRITON_INTERPRET=1      # the rehearsal: the fused kernel interpreted
LOG="${GPU_FIGURES%.json}.log"
LIMIT="${GPU_CHECK_TIMEOUT:-420}"                # seconds for the GPU tests, start-up included
rm -f "$GPU_FIGURES" "$LOG"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
status=0
timeout "$LIMIT" python -m pytest tests/gpu -q -rs --tb=short -p no:cacheprovider > "$LOG" 2>&1 || status=$?
tail -n 3 "$LOG"
[ "$status" = 124 ] && echo "== the GPU tests ran past $LIMIT s and were stopped"
python tests/gpu/summary.py "$GPU_FIGURES" || status=1
echo "== pytest's output in $LOG"
if [ "${FULL:-0}" = 1 ]; then nbdev_test --n_workers 4 && python -m pytest tests -q || status=1; fi
exit "$status"
