#!/usr/bin/env bash
# Issue 20 item 4: CIFAR-10-LT rho=100, ResNet-32, 5 epochs, 3 seeds, one thread (resumable: rerun this file; output docs/figures/longtail/ (results committed as they land; checkpoints ignored))
cd "$(dirname "$0")/.."
exec .venv/bin/edloss compare --dataset cifar10 --imbalance 100 --models resnet32 --epochs 5 \
  --losses ce poly1 edl edl-prior=edl:prior_aware=true logit_adjusted balanced_softmax ldam_drw cb_ce \
  --versus edl-prior logit_adjusted --versus edl-prior balanced_softmax --versus edl ce \
  --seeds 0 1 2 --threads 1 --data-dir ../shared/data --out docs/figures/longtail/cifar10-rho100
