#!/usr/bin/env bash
# Generative replay (issue 22): outputs in runs/generative/<part>_<method>/ (each with the
# generator's samples after each task: samples_<scenario>.png when the inputs are images), and
# `python experiments/collect_generative.py` prints the tables of RESULTS.md. PARTS selects
# (default "smnist scifar100"); METHODS overrides a part's methods.
#
# smnist    — DGR and DGR + distill on Split MNIST in van de Ven & Tolias 2019's protocol
#             (cljax/configs/split_mnist.py: MLP 784-400-400, Adam 1e-3, 2000 iterations
#             per task, batch 128, Task / Domain / Class-IL) with their generator (a VAE
#             784-400-400-100 trained beside the classifier, one Adam 1e-3 step per step).
#             SEEDS (default 5).
# scifar100 — DGR and BI-R on Split CIFAR-100 in van de Ven et al. 2022's protocol
#             (cljax/configs/split_cifar100.py), REDUCED as the rehearsal table of
#             RESULTS.md is: the conv encoder pre-trained 10 epochs instead of 100, STEPS
#             (default 50) iterations per task instead of 5000, 3 seeds. BI-R is theirs; DGR's VAE
#             (1024-2000-2000-100, Gaussian, Adam 1e-4) generates the frozen conv features, where
#             theirs generates images through a trainable deconv decoder (a deviation: our runs
#             cache the features and never see the images after encoding).
set -euo pipefail
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-../shared/tfds}
out=runs/generative
for part in ${PARTS:-smnist scifar100}; do
  case $part in
  smnist)
    for m in ${METHODS:-dgr dgr_distill}; do
      cljax run split_mnist --method "$m" --seeds "${SEEDS:-5}" \
        --no-progress --workdir "$out/smnist_$m"
    done
    ;;
  scifar100)
    run() { cljax run split_cifar100 --no-progress --seeds 3 \
              --steps "${STEPS:-50}" --set features.pretrain.epochs=10 "$@"; }
    for m in ${METHODS:-bir dgr}; do
      case $m in
      dgr) run --method dgr --set "method_options={'widths': [2000, 2000], 'likelihood': \
'gaussian', 'learning_rate': 1e-4}" --workdir "$out/scifar100_dgr" ;;
      *) run --method "$m" --workdir "$out/scifar100_$m" ;;
      esac
    done
    ;;
  esac
done
