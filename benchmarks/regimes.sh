#!/usr/bin/env bash
# The regime matrix (issue 33) on this 2-core machine: two background jobs of one thread each,
# every run checkpointed, so a job stopped by the end of a session resumes where it was.
#
#   benchmarks/regimes.sh A    # CIFAR-10: calibration regimes first, then the held-out ones; ends backfilling c10-full
#   benchmarks/regimes.sh B    # the calibration regimes from the other end (CIFAR-100 first), then c100-limited, c10-full
#   nohup benchmarks/regimes.sh A > logs/regimes-A.log 2>&1 &   # as the sessions run it
#
# Records go to docs/figures/regimes/ (checkpoints and locks are ignored by git); the matrix
# (matrix.md/json/png) is rewritten after every regime. Each regime runs its own arms (`Regime.arms` in
# src/edloss/lab/regimes.py; `edloss regimes --list` shows them), whichever job runs it. A job that finds
# another job on a regime backfills it (`edloss regimes R --backfill`: its runs from the end, each moved into
# place if the other job has not started it, until the two meet), then goes on with its own queue, so the
# two jobs never wait for each other or collide on a lock.
set -euo pipefail
cd "$(dirname "$0")/.."
JOB=${1:?name a job: A (CIFAR-10) or B (CIFAR-100 first, then c10-full)}
case "$JOB" in A|B) ;; *) echo "unknown job $JOB: A or B" >&2; exit 2 ;; esac  # before any data is made
OUT=docs/figures/regimes
ROOT=$PWD
mkdir -p data logs  # ignored by git: both data sets in the pickle layout, in one folder; the jobs' queue locks
[ -f data/cifar-100-python/train ] || (cd ../shared/data && "$ROOT/.venv/bin/python" materialize.py "$ROOT/data")
[ -d data/cifar-10-batches-py ] || cp -r ../shared/data/cifar-10-batches-py data/

run() {
  local regime=$1 rc=0
  EDLOSS_DATA="$PWD/data" flock -n -E 75 "logs/.queue-$regime" \
    .venv/bin/edloss regimes "$regime" --out "$OUT" --threads 1 || rc=$?
  if [ "$rc" -eq 75 ]; then
    echo "== $regime: another job is on it; backfilling it from the end"
    EDLOSS_DATA="$PWD/data" .venv/bin/edloss regimes "$regime" --backfill --out "$OUT" --threads 1 || \
      echo "== $regime: backfill stopped (exit $?); going on"
  elif [ "$rc" -ne 0 ]; then exit "$rc"; fi
}
case "$JOB" in
  A) for r in c10-limited-50 c10-budget c100-budget c10-noise-0.4 c10-lt-100 c10-limited-250 c10-noise-0.6 c10-full; do run $r; done ;;
  B) for r in c100-budget c10-budget c10-limited-50 c100-limited c10-noise-0.6 c10-full; do run $r; done ;;
esac
