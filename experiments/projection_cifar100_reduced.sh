#!/usr/bin/env bash
# 10-split CIFAR-100 in GPM's protocol (cljax/configs/split_cifar100_gpm.py: AlexNet, one
# head per task, batch 64, SGD 0.01) REDUCED to one epoch per task so that it fits a 2-core CPU
# (≈ 16–44 min per method for 3 vmapped seeds); the full protocol (up to 200 epochs) is a GPU job.
# Outputs in runs/projection/cifar100_<method>_e1/; experiments/collect_projection.py prints the
# table. The config's method_options are GPM's, so the other methods reset them.
set -euo pipefail
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-../shared/tfds}
run() { cljax run split_cifar100_gpm --no-progress --seeds 3 --set epochs=1 "$@"; }
out=runs/projection
run --method gpm --workdir $out/cifar100_gpm_e1
run --method rgo --set "method_options={}" --workdir $out/cifar100_rgo_e1
run --method none --set "method_options={}" --workdir $out/cifar100_none_e1
# EWC on plain SGD: λ = 100 (the stable λ range of the MNIST runs; GPM's paper gives none)
run --method ewc --set "method_options={}" --set "hparams={'strength': 100.0}" \
    --workdir $out/cifar100_ewc_e1
# memories: 13 examples per class = 130 per task (A-GEM's split CIFAR budget, 65 per 5 classes)
run --method agem --set "method_options={'per_class': 13}" --workdir $out/cifar100_agem_e1
run --method er --set "method_options={'per_class': 13}" --workdir $out/cifar100_er_e1
run --method joint --set "method_options={}" --workdir $out/cifar100_joint_e1
