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

# Jobs through the backbone, on the first one (about four minutes on 2 CPU cores):
# a one-epoch fine-tune with the quick recipe, PGD against its stored probe, and speed.
bb="${backbones[0]}"
"$BOBX" finetune --backbone "$bb" --dataset digits --recipe quick --epochs 1 --batch-size 32
"$BOBX" robustness --backbone "$bb" --dataset digits --limit 50 --steps 3
speed_args=()
for b in "${backbones[@]}"; do speed_args+=(--backbone "$b"); done
"$BOBX" speed "${speed_args[@]}" --batch-size 1,16 --repeats 3

"$BOBX" ls
# "overall" = the paper's performance tasks (here classification and retrieval);
# calibration and speed (images/s of this machine) are ranked on their own rows only.
"$BOBX" rank --n-boot 200

# one page to look at and send around: rankings, figures and provenance, no network needed
report=$("$BOBX" report --output "$BOBX_STORE/report.html" --n-boot 200)
echo "demo: report written to $report"
