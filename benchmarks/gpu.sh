#!/usr/bin/env bash
# The GPU stage on one GPU, in one command (a few minutes on an H200): prints, for ViT-B/32 and ViT-B/16,
# images/s of the batched heatmap pass against per-sample and the paper's loop at batch 64 and 256, the
# heatmap pass against a plain forward and backward pass (d), peak memory with and without frozen weights,
# tf32/bf16/fp16 heatmap errors against fp32, the 256 and 384 px ViT-B/16 (ALBEF's and BLIP's tower sizes),
# and the GPU stage end to end through the CLI on 5,000 synthetic 224 px images, Zarr writes included.
#
#   bash benchmarks/gpu.sh [OUTPUT_DIR]        # JSON figures and logs go to OUTPUT_DIR (default benchmarks/out)
#
# Each step runs even when an earlier one failed; the exit status says whether all succeeded.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/out}
mkdir -p "$out"
python=${PYTHON:-python3}
workers=$(( $(nproc) > 13 ? 12 : $(nproc) - 1 ))
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

"$python" benchmarks/infer.py --device cuda --models ViT-B/32 ViT-B/16 --batch-sizes 64 256 --images 1024 \
    --loop-images 64 --classes 1000 --precision-images 64 --json "$out/infer.json" 2>&1 | tee "$out/infer.log" \
    || status=1
"$python" benchmarks/infer.py --device cuda --models ViT-B/16@256 ViT-B/16@384 --batch-sizes 64 --images 512 \
    --loop-images 0 --classes 1000 --precision-images 0 --json "$out/infer_sizes.json" 2>&1 \
    | tee "$out/infer_sizes.log" || status=1
"$python" benchmarks/infer_e2e.py --device cuda --models ViT-B/32 ViT-B/16 --images 5000 --batch-size 256 \
    --workers "$workers" --precisions fp32 bf16 --work "${E2E_WORK:-$out/e2e}" --json "$out/e2e.json" 2>&1 \
    | tee "$out/e2e.log" || status=1
exit $status
