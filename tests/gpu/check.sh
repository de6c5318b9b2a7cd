#!/usr/bin/env bash
# The GPU check of issue 16, for a machine with one or more CUDA GPUs: the GPU tests with their measured figures,
# then the whole suite (notebooks and tests) on this machine. From the repository root, in the project's venv:
#   bash tests/gpu/check.sh            # FULL=0 skips the whole-suite part
set -euo pipefail
cd "$(dirname "$0")/../.."
export GPU_FIGURES="${GPU_FIGURES:-$PWD/gpu_figures.json}"
rm -f "$GPU_FIGURES"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'gpus', torch.cuda.device_count())"
python -m pytest tests/gpu -q -rs
echo "== figures ($GPU_FIGURES)"; cat "$GPU_FIGURES"; echo
if [ "${FULL:-1}" = 1 ]; then nbdev_test --n_workers 4 && python -m pytest tests -q; fi
