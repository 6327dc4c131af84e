#!/usr/bin/env bash
# The architecture family (PackNet, HAT, progressive networks) beside the other families, four
# protocols; outputs in runs/architecture/<protocol>_<method>[_<variant>]/, and
# `python experiments/collect_architecture.py` prints the tables of RESULTS.md. PARTS selects
# (default "smnist agem1k agem cifar").
#
# smnist — Split MNIST Task-IL, van de Ven & Tolias 2019 (cljax/configs/split_mnist.py),
#          5 seeds; the other methods' rows are RESULTS.md's.
# agem   — Permuted MNIST in A-GEM's ICLR 2019 protocol (cljax/configs/permuted_mnist_agem.py:
#          17 tasks of 55,000 examples, one pass at batch 10, SGD, their initialisation), 5 seeds.
#          The methods of A-GEM's own table use its shared head (Domain-IL) and the learning rates
#          and strengths of its replicate_results_iclr19.sh; the architecture methods need the
#          task id (Task-IL: one head or column per task), and fine-tuning and joint training run
#          in both scenarios.
# agem1k — the same REDUCED to 1,000 examples per task (100 steps; the later ER paper's size) with
#          flax's default initialisation, as first run here.
# cifar  — 10-split CIFAR-100 in GPM's protocol REDUCED to one epoch per task
#          (cljax/configs/split_cifar100_gpm.py --set epochs=1), 3 seeds, as the reduced
#          table of RESULTS.md's gradient projection section (GPM, RGO there).
set -euo pipefail
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-../shared/tfds}
out=runs/architecture
# PackNet keeps 1 - ratio of the weights still free after each task: 0.75 (its authors', the
# default) for Split MNIST's 5 tasks; for 17 and 10 tasks the ratios that give every task an
# equal share of each layer (task t keeps 1 / (T - t) of what is left)
even() { python -c "import sys; T = int(sys.argv[1]); print(tuple(round(1 - 1 / (T - t), 6) for t in range(T)))" $1; }
for part in ${PARTS:-smnist agem1k agem cifar}; do
  case $part in
  smnist)
    run() { cljax run split_mnist --no-progress --seeds 5 --scenarios task "$@"; }
    for m in packnet hat pnn; do run --method $m --workdir $out/smnist_$m; done
    ;;
  agem|agem1k)
    if [ $part = agem ]; then
      run() { cljax run permuted_mnist_agem --no-progress --seeds 5 "$@"; }
    else
      run() { cljax run permuted_mnist_agem --no-progress --seeds 5 \
                --set stream_options.max_train_per_task=1000 --set steps=100 \
                --set "model={'kind': 'mlp', 'widths': [256, 256]}" "$@"; }
    fi
    lr() { echo "--set optimizer.learning_rate=$1"; }
    # in order of what the tables need first; the progressive network last, the longest (each
    # step touches all 17 preallocated columns, and each evaluation sends every task's 10,000
    # test images through its column and all earlier ones)
    run --method none $(lr 0.03) --workdir $out/${part}_none
    # 25 examples per class (250 per task), reference batch 256 (EPS_MEM_BATCH_SIZE)
    run --method agem $(lr 0.1) --set "method_options={'per_class': 25, 'memory_batch_size': 256}" \
      --workdir $out/${part}_agem
    # with the task id: one head (or column) per task
    run --method packnet $(lr 0.1) --scenarios task \
      --set "method_options={'prune_ratio': $(even 17)}" --workdir $out/${part}_packnet
    run --method hat $(lr 0.1) --scenarios task --workdir $out/${part}_hat
    run --method ewc $(lr 0.03) --set "hparams={'strength': 10.0}" --workdir $out/${part}_ewc
    run --method joint $(lr 0.1) --workdir $out/${part}_joint
    run --method er $(lr 0.1) --set "method_options={'per_class': 25}" --workdir $out/${part}_er
    run --method si $(lr 0.1) --set "hparams={'strength': 0.1}" --workdir $out/${part}_si
    run --method mas $(lr 0.1) --set "hparams={'strength': 0.1}" --workdir $out/${part}_mas
    run --method none $(lr 0.03) --scenarios task --workdir $out/${part}_none_task
    run --method joint $(lr 0.1) --scenarios task --workdir $out/${part}_joint_task
    # their λ with our Fisher (the expected one of each task's examples, summed over tasks;
    # theirs: a running average of squared minibatch gradients, min-max normalised to [0, 1]),
    # and the λ around it
    for s in 0.1 1 100; do
      run --method ewc $(lr 0.03) --set "hparams={'strength': $s}" --workdir $out/${part}_ewc_l$s
    done
    run --method pnn $(lr 0.1) --scenarios task --workdir $out/${part}_pnn
    ;;
  cifar)
    run() { cljax run split_cifar100_gpm --no-progress --seeds 3 \
              --set epochs=1 --set "method_options={}" "$@"; }
    run --method hat --workdir $out/cifar_hat
    run --method packnet --set "method_options={'prune_ratio': $(even 10)}" \
      --workdir $out/cifar_packnet
    ;;
  esac
done
