#!/usr/bin/env bash
# What a lent GPU machine runs (README "Benchmarks"), in one call: the GPU tests, `bench.py --paper` (issue 12's
# H100 targets: the paper-size U-Net's training and DDIM-50 sampling), then the CPU-size comparisons on the GPU with
# whatever time is left before $BUDGET seconds. The machine has torch and Lightning but not all of genbench's
# dependencies: they come as wheels in .whl/ (README "Benchmarks" says how to fetch them), and Fashion-MNIST's IDX
# files in .gpu/fashion-mnist/ where Debian's package is not installed. Results and logs go to $OUT.
set -u
START=$SECONDS
BUDGET=${BUDGET:-520}
OUT=${OUT:-results/bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PROJECT_ROOT=$PWD TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
left() { local rest=$((BUDGET - (SECONDS - START))); echo $((rest < $1 ? (rest > 10 ? rest : 10) : $1)); }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -d .gpu/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && cp -r .gpu/fashion-mnist /usr/share/datasets/
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, pytorch_lightning, hydra, datasets, torch_fidelity, diffusers, genbench.train
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', pytorch_lightning.__version__)" || exit 1

echo "== GPU tests ($((SECONDS - START)) s)"
timeout "$(left 120)" python3 -m pytest -q -p no:cacheprovider -k gpu tests/test_training.py tests/test_protocol.py \
  2>&1 | tee "$OUT/gpu-tests.log" | tail -4
echo "== bench --paper ($((SECONDS - START)) s)"
timeout "$(left 330)" python3 benchmarks/bench.py --paper --out "$OUT" hardware=gpu_bf16 2>&1 | tee "$OUT/bench-paper.log" \
  | grep -v "^\[bench" | tail -30
for part in "training" "sampling evaluation"; do
  echo "== bench --only $part ($((SECONDS - START)) s)"
  timeout "$(left 200)" python3 benchmarks/bench.py --only $part --out "$OUT" hardware=gpu_bf16 \
    >>"$OUT/bench-cpu-size.log" 2>&1
done
tail -25 "$OUT/bench-cpu-size.log"
echo "== done ($((SECONDS - START)) s)"
