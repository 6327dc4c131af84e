#!/usr/bin/env bash
# Permuted MNIST Domain-IL (van de Ven & Tolias 2019 protocol: 10 tasks, 32×32, 2×1000, Adam 1e-4,
# 5000 it/task, batch 128), 3 seeds of each method as one vmapped program.
# Strengths: the values tuned for this protocol in van de Ven's current code (param_values.py:
# EWC λ 100, SI c 10 for permMNIST), whose Fisher (exact, 'all' labels, per-example mean) is on
# our scale. No λ sweep here: one 3-seed run takes ≈ 35 min on a 2-core CPU (SI, measured).
# Outputs in runs/perm_<name>/; `python experiments/collect_results.py` prints the table.
set -euo pipefail
run() { cljax run permuted_mnist --no-progress --scenarios domain \
          --seeds 3 --method "$1" --workdir "runs/perm_$2" "${@:3}"; }
run none       none
run ewc        ewc        --set "hparams={'strength':100.0}"
run online_ewc online_ewc --set "hparams={'strength':100.0,'decay':1.0}"
run si         si         --set "hparams={'strength':10.0,'xi':0.1}"
