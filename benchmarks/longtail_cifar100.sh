#!/usr/bin/env bash
# Issue 20 item 4: CIFAR-100-LT rho=100, ResNet-32, 5 epochs (the CIFAR-10-LT recipe), 3 seeds, one thread a job.
# Needs CIFAR-100 in data/ (python ../shared/data/materialize.py data). Resumable: rerun this file.
# On two cores: `benchmarks/longtail_cifar100.sh a` and `... b` run the two halves of the arms side by
# side into part-b/; `benchmarks/longtail_cifar100.sh merge` moves part-b's runs in and writes one summary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=docs/figures/longtail/cifar100-rho100
PANEL=src/edloss/lab/panel
A=(ce poly1 edl edl-prior=edl:prior_aware=true logit_adjusted)
B=(balanced_softmax ldam_drw cb_ce
   edl-students-lt=edl:checkpoint=$PANEL/students-longtail-100,prior_aware=true
   edl-students-lt-hard=edl:checkpoint=$PANEL/students-longtail-100-hard,prior_aware=true)
VERSUS=(--versus edl-students-lt logit_adjusted --versus edl-students-lt balanced_softmax
        --versus edl-students-lt ldam_drw --versus edl-prior logit_adjusted)
run() {  # run OUT ARMS...
  local out=$1; shift
  .venv/bin/edloss compare --dataset cifar100 --imbalance 100 --models resnet32 --epochs 5 \
    --losses "$@" --seeds 0 1 2 --threads 1 --data-dir data --out "$out"
}
case "${1:-all}" in
  a) run "$OUT" "${A[@]}" ;;
  b) run "$OUT/part-b" "${B[@]}" ;;
  merge) if [ -d "$OUT/part-b/resnet32" ]; then
           mkdir -p "$OUT/resnet32"; cp -r "$OUT/part-b/resnet32/." "$OUT/resnet32/"; rm -rf "$OUT/part-b"
         fi
         run "$OUT" "${A[@]}" "${B[@]}" "${VERSUS[@]}" ;;
  all) run "$OUT" "${A[@]}" "${B[@]}" "${VERSUS[@]}" ;;
esac
