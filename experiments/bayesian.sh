#!/usr/bin/env bash
# VCL (issue 22) in its authors' two protocols, REDUCED for this 2-core CPU (see each part), beside
# EWC and SI in the same protocol at the methods' default strengths (not tuned here); outputs in
# runs/bayesian/<protocol>_<method>[_<coreset>]/, and `python experiments/collect_bayesian.py`
# prints the tables of RESULTS.md. PARTS selects (default "smnist pmnist"); SEEDS (default 2).
#
# smnist — Split MNIST Task-IL (cljax/configs/split_mnist_vcl.py: MLP 256-256, a head per
#          task, "full batch" 12,000, 120 steps per task, ML init 120 steps, coresets of 40
#          fine-tuned 120 epochs), REDUCED to 1 Monte Carlo sample per training step (theirs: 10).
# pmnist — Permuted MNIST (cljax/configs/permuted_mnist_vcl.py: MLP 100-100, one head,
#          batch 256), REDUCED to 5 tasks (their script's num_tasks; the paper's figure has 10),
#          10 epochs per task (2,344 steps; theirs 100), ML init and coreset fine-tuning 10 epochs,
#          1 Monte Carlo sample per training step (theirs: 10); coresets of 200, 100 prediction
#          samples as theirs.
set -euo pipefail
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-../shared/tfds}
out=runs/bayesian
seeds=${SEEDS:-2}
for part in ${PARTS:-smnist pmnist}; do
  case $part in
  smnist)
    cfg=split_mnist_vcl
    base="'ml_init_steps': 120, 'ml_init_batch': 12000, 'finetune_epochs': 120, 'finetune_batch': 40, 'train_samples': 1"
    run() { cljax run $cfg --no-progress --seeds $seeds "$@"; }
    ;;
  pmnist)
    cfg=permuted_mnist_vcl
    base="'ml_init_steps': 2344, 'ml_init_batch': 256, 'finetune_epochs': 10, 'finetune_batch': 256, 'train_samples': 1"
    run() { cljax run $cfg --no-progress --seeds $seeds --set steps=2344 \
              --set stream_options.num_tasks=5 "$@"; }
    ;;
  esac
  size=$([ $part = smnist ] && echo 40 || echo 200)
  run --method vcl --set "method_options={$base}" --workdir $out/${part}_vcl
  run --method vcl --set "method_options={$base, 'coreset': 'random', 'coreset_size': $size}" \
    --workdir $out/${part}_vcl_random
  run --method vcl --set "method_options={$base, 'coreset': 'kcenter', 'coreset_size': $size}" \
    --workdir $out/${part}_vcl_kcenter
  for m in ewc si none; do run --method $m --set "method_options={}" --workdir $out/${part}_$m; done
done
