#!/usr/bin/env bash
# Near pairs for the students world's second gate (issue 34), at the tuned protocol: three variants
# that differ from the shipped default by a little (v3, the default times 2 and times 0.5) join
# the c10-limited-50 calibration regime as extra arms, each picking its own learning rate on the
# same grid, then running the regime's 5 seeds. The regime's own arms are finished and skipped.
#
#   nohup benchmarks/near_pairs.sh > logs/near-pairs.log 2>&1 &   # a third one-thread job, resumable
set -euo pipefail
cd "$(dirname "$0")/.."
EDLOSS_DATA="$PWD/data" .venv/bin/edloss regimes c10-limited-50 \
  --arms ce ls=label_smoothing:0.1 poly1 cosine edl edl-v3=edl:name=v3 edl-gain2=edl:gain=2 edl-gain0.5=edl:gain=0.5 \
  --out docs/figures/regimes --threads 1
