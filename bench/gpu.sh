#!/usr/bin/env bash
# The first run on a GPU, one command, a few minutes on one H100 or H200:
#   1. the bf16 Triton kernels, forward and backward, against the float64 reference on the device;
#   2. the JRT paper's throughput table (Table 5) row at T = 32768, B = 16: FlashAttention-2 (torch SDPA
#      flash), JRT-RNN, JRT-Prompt (Based at 2T), Based, and fla's fused_chunk_based when fla is
#      installed, with speed-ups over FlashAttention-2 from the same run, and JRT-RNN's forward + backward;
#   3. decode and one training step of the 360M presets.
# It writes bench/gpu-<device>-<date>.json and results/gpu-<device>-<date>.md. Extra arguments go to
# bench.py (e.g. --peak 989 3.35, or --out FILE.json). Without CUDA it runs the tiny CPU form.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python bench.py --suite gpu "$@"
