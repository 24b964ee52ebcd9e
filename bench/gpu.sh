#!/usr/bin/env bash
# The first run on a GPU, one command, sized to end within 6 minutes on one H100 (--budget_s):
#
#   bash bench/gpu.sh --out DIR [--commit SHA] [--wheels FOLDER] [more bench/gpu.py options]
#
# In this order, most important first (bench/gpu.py's gpu_suite says more):
#   1. forward and every gradient of both kernel designs, kernels.pla and the previous one
#      (bench/pla_prev.py), against the float64 reference on the device, at the timed B, H, dv and bf16
#      (T 1024: the same compiled kernels);
#   2. the JRT paper's Table-5 row (T 32768, B 16): FlashAttention-2 (the SDPA backend that ran is recorded),
#      JRT-RNN, JRT-Prompt and Based of both designs side by side, fla's fused_chunk_based;
#   3. forward + backward against FlashAttention-2's forward + backward;
#   4. the Table-5 sweeps (T 2k..32k at B 16; B 2..64 at T 16k); 5. pads, states, odd T, dv 112;
#   6. decode; 7. a training step of the 360M presets.
# Each row is written to DIR as soon as it is measured: DIR/gpu.jsonl (a line per row), DIR/gpu.json and
# DIR/gpu.md (rewritten whole), so a run cut short keeps what it finished. Rows start only within
# --budget_s (300 s). The exit status is 1 if a row failed (an error or a wrong result), the run was cut
# short, or an argument was refused (one line, before any work).
#
# Without CUDA it refuses, unless --tiny is given (the tiny CPU form, seconds). Where .git is absent
# (a copy of the tree), pass --commit "$(git rev-parse HEAD)" from the checkout it was copied from.
#
# fla (flash-linear-attention) is optional and the GPU machine may have no network. Bring it as a folder
# of wheels made on a machine with one, carried along:
#   pip download --no-deps --only-binary=:all: -d .whl fla-core==0.6.0     # (+ einops if the GPU lacks it)
# then `bash bench/gpu.sh --wheels .whl --out DIR`: it installs them with pip --target into a temporary
# folder and puts that on PYTHONPATH. Without fla its row says "skipped: fla not importable" and how.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
args=()
while (($#)); do
  case "$1" in
    --wheels)
      if (($# < 2)) || ! compgen -G "$2/*.whl" >/dev/null; then
        echo "bench/gpu.sh --wheels: give a folder holding .whl files; got '${2-}'" >&2; exit 2
      fi
      site="$(mktemp -d)"
      "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$2"/*.whl
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
      shift 2;;
    *) args+=("$1"); shift;;
  esac
done
exec "$python" "$root/bench/gpu.py" ${args[@]+"${args[@]}"}
