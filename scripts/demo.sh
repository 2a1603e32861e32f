#!/usr/bin/env bash
# The README's demo (`make demo`): the whole bobx flow on the built-in digits
# (scikit-learn's 1,797 real handwritten digits), with three small backbones of
# the paper's Table 3. Pretrained weights are used when they can be had (network
# or a warm HF cache); offline, each backbone's random-init baseline runs instead.
set -euo pipefail
BOBX="${BOBX:-.venv/bin/bobx}"
export BOBX_STORE="${BOBX_STORE:-./demo-store}"

backbones=()
for name in resnet18 efficientnet_b0 regnetx_400mf; do
  if "$BOBX" extract --backbone "sup_${name}_in1k" --dataset digits --split train --split test; then
    backbones+=("sup_${name}_in1k")
  else
    echo "demo: pretrained sup_${name}_in1k unavailable here; using its random-init baseline"
    "$BOBX" extract --backbone "rand_${name}" --dataset digits --split train --split test
    backbones+=("rand_${name}")
  fi
done

# Bare evaluator commands evaluate every (backbone, dataset) in the store that has the
# splits they need and no result with the same knobs yet; each says what it ran and what
# it skipped, and why (a second `make demo` skips everything already done).
"$BOBX" knn --k 10,20
"$BOBX" probe
"$BOBX" probe --fraction 0.1
"$BOBX" calibrate --plot "$BOBX_STORE/reliability.png"
"$BOBX" retrieve --dataset digits  # --backbone defaults to every backbone with features

"$BOBX" ls
# "overall" = the paper's performance tasks (here classification and retrieval);
# calibration and speed (images/s of this machine) are ranked on their own rows only.
"$BOBX" rank --n-boot 200
