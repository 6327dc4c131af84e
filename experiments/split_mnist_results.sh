#!/usr/bin/env bash
# Split MNIST Task-IL table (van de Ven protocol) at the strengths chosen by
# split_mnist_sweeps.sh; seeds 0..S-1 of each method run as one vmapped program.
# Outputs in runs/final_<name>/; `python experiments/collect_results.py` prints the table.
set -euo pipefail
run() { cljax run split_mnist --no-progress --method "$1" \
          --workdir "runs/final_$2" "${@:3}"; }
T="--scenarios task --seeds 5"
run none       none       $T
run joint      joint      $T
run ewc        ewc        $T --set "hparams={'strength':1e5}"
run online_ewc online_ewc $T --set "hparams={'strength':1e4,'decay':1.0}"
run si         si         $T --set "hparams={'strength':10.0,'xi':0.1}"
run mas        mas        $T --set "hparams={'strength':0.1}"
run l2         l2         $T --set "hparams={'strength':0.1}"
# NCL: the damping d is a prior precision on every weight (an L2 pull of strength d where the
# Fisher is ~0) and flat directions move at η/d (×10 with momentum 0.9). η/d = 0.05 trains
# stably; η/d ≥ 0.5 diverges (the NaN guard stops the run, and with it a whole sweep), so the
# points are run one by one at η/d = 0.05 with a weaker pull each.
run ncl        ncl_d0.1   --scenarios task --seeds 3 \
    --set "hparams={'strength':1e3,'damping':0.1,'learning_rate':5e-3}"
run ncl        ncl_d0.01  $T --set "hparams={'strength':1e3,'damping':0.01,'learning_rate':5e-4}"
# K-FAC NCL (exact-Fisher factors, fused preconditioned gradient), same η and d; s from
# split_mnist_sweeps.sh.
run ncl_kfac   ncl_kfac   $T --set "hparams={'strength':1e2,'damping':0.01,'learning_rate':5e-4}"
# K-FAC EWC: exact-Fisher factors (default) merged online (nearest Kronecker product).
run kfac_ewc   kfac_ewc   $T --set "hparams={'strength':1e5,'decay':1.0}"
# The earlier K-FAC row, factors from one sampled label per example (fisher='true'):
run kfac_ewc   kfac_ewc_true --scenarios task --seeds 3 --set "hparams={'strength':1e4,'decay':1.0}" \
    --set "method_options={'fisher':'true'}"
# Domain-IL and Class-IL for EWC, online EWC and SI: a 3-point sweep × 3 seeds per method, one
# vmapped program per scenario; the table reports the best point of each.
DC="--scenarios domain,class --seeds 3"
run ewc        ewc_dc        $DC --sweep strength=1e5,1e7,1e9
run si         si_dc         $DC --set "hparams={'xi':0.1}" --sweep strength=1e3,1e4,1e5
run online_ewc online_ewc_dc $DC --set "hparams={'decay':1.0}" --sweep strength=1e7,1e9
