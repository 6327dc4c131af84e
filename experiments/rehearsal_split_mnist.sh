#!/usr/bin/env bash
# Split MNIST, van de Ven et al. 2022 protocol (MLP 784-400-400, Adam 1e-3, 2000 it/task,
# batch 128, budget 100 examples per class), rehearsal methods next to none and joint, 5 seeds
# each as one vmapped program per scenario. Outputs in runs/rehearsal/split_mnist_<method>/;
# `python experiments/collect_results.py rehearsal` prints the table of RESULTS.md.
set -euo pipefail
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-../shared/tfds}
run() { cljax run split_mnist --no-progress --seeds 5 "$@"; }
run --method none --workdir runs/rehearsal/split_mnist_none
run --method joint --workdir runs/rehearsal/split_mnist_joint
run --method er --workdir runs/rehearsal/split_mnist_er
run --method agem --workdir runs/rehearsal/split_mnist_agem
run --method lwf --workdir runs/rehearsal/split_mnist_lwf
run --method icarl --scenarios class --workdir runs/rehearsal/split_mnist_icarl
# DER++: reservoir memory of the same budget (1000 examples); alpha swept over mammoth's
# Seq-MNIST values (0.2 at buffer 5120, 1.0 at buffer 500), beta 0.5 (theirs at both)
run --method derpp --sweep "alpha=${DERPP_ALPHAS:-0.2,1.0}" --workdir runs/rehearsal/split_mnist_derpp
run --method gem --workdir runs/rehearsal/split_mnist_gem
