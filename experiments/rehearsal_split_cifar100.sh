#!/usr/bin/env bash
# Split CIFAR-100, van de Ven et al. 2022 protocol, REDUCED to fit this 2-core CPU (see
# RESULTS.md): the CIFAR-10 pre-training of the conv layers runs 10 epochs instead of 100
# (cached in runs/cache, shared by every run below) and every task 100 iterations instead of
# 5000 (STEPS=50 halves that again); everything else is the protocol (frozen conv features,
# FC 2000-2000, Adam 1e-4, batch 256, budget 100 per class). 3 seeds per method, one vmapped program per scenario.
# The full protocol is the same commands without the two REDUCE options.
set -euo pipefail
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-../shared/tfds}
REDUCE=(--steps "${STEPS:-100}" --set features.pretrain.epochs=10)
run() { cljax run split_cifar100 --no-progress --seeds 3 "${REDUCE[@]}" "$@"; }
out=runs/rehearsal/split_cifar100
run --method none --workdir $out/none
run --method joint --workdir $out/joint
run --method lwf --workdir $out/lwf
run --method er --workdir $out/er
run --method agem --workdir $out/agem
run --method derpp --sweep "alpha=${DERPP_ALPHAS:-0.2,1.0}" --workdir $out/derpp
run --method icarl --scenarios class --workdir $out/icarl
# EWC and SI with van de Ven et al.'s CIFAR-100 values (their EWC uses the exact Fisher, as ours)
run --method ewc --scenarios task,domain --set "hparams={'strength': 1e3}" --workdir $out/ewc_td
run --method ewc --scenarios class --set "hparams={'strength': 1e2}" --workdir $out/ewc_c
run --method si --scenarios task --set "hparams={'strength': 100.0, 'xi': 0.1}" --workdir $out/si_t
run --method si --scenarios domain --set "hparams={'strength': 500.0, 'xi': 0.1}" --workdir $out/si_d
run --method si --scenarios class --set "hparams={'strength': 5.0, 'xi': 0.1}" --workdir $out/si_c
