#!/usr/bin/env bash
# GPU check: install the project, then time a few hundred training steps of the MobileNetV2
# config (configs/siri_whu_ddc.json) and a ResNet50 run in float32 and mixed_float16, printing
# images/s, the mixed-precision speedup and whether every loss stayed finite (a markdown table).
#
#   bash benchmarks/gpu_check.sh                     # on a machine with a GPU
#   GPU_CHECK_STEPS=50 bash benchmarks/gpu_check.sh  # shorter
#
# Environment: GPU_CHECK_STEPS (300), GPU_CHECK_RUNS (mobilenet_v2,resnet50),
# GPU_CHECK_SKIP_INSTALL=1 (use the installed packages), GPU_CHECK_ALLOW_CPU=1 (run without a
# GPU, for testing this script), DDC_WEIGHTS_ROOT (default ../shared/weights; without the
# MobileNetV2 file the run uses random weights, which does not change its speed).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ]]; then
  # A machine without internet access keeps what is installed; the import check below decides.
  python -m pip install --quiet --disable-pip-version-check -r requirements.txt \
    || echo "gpu_check: pip install -r requirements.txt failed; using the installed packages"
  python -m pip install --quiet --disable-pip-version-check --no-deps -e . \
    || echo "gpu_check: pip install -e . failed; using PYTHONPATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DDC_WEIGHTS_ROOT="${DDC_WEIGHTS_ROOT:-$(cd .. && pwd)/shared/weights}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || echo "gpu_check: nvidia-smi not found"
python -c "import tensorflow as tf; print('TensorFlow', tf.__version__, 'GPUs:', tf.config.list_physical_devices('GPU'))"

require=(--require-gpu)
[[ "${GPU_CHECK_ALLOW_CPU:-0}" == 1 ]] && require=()
python benchmarks/bench_precision.py --steps "${GPU_CHECK_STEPS:-300}" \
  --runs "${GPU_CHECK_RUNS:-mobilenet_v2,resnet50}" "${require[@]}" "$@"
