#!/usr/bin/env bash
# λ sweeps for Split MNIST Task-IL (van de Ven protocol). Each method's whole grid × seeds runs as
# one vmapped program. Outputs in runs/sweep_<method>/ (report.md, stability_plasticity.png).
set -euo pipefail
run() { cljax run split_mnist --scenarios task --no-progress \
          --method "$1" --workdir "runs/sweep_$1" "${@:2}"; }
run ewc        --seeds 2 --sweep strength=1e1,1e2,1e3,1e4,1e5,1e6
run online_ewc --seeds 1 --sweep strength=1e2,1e3,1e4,1e5
run si         --seeds 1 --sweep strength=1,10,100,1000
run mas        --seeds 1 --sweep strength=0.1,1,10,100
run l2         --seeds 1 --sweep strength=1e-2,1e-1,1,10
run ncl        --seeds 1 --sweep strength=1e2,1e3,1e4,1e5
run ncl_kfac   --seeds 1 --sweep strength=1e2,1e3,1e4,1e5 \
    --set "hparams={'damping':0.01,'learning_rate':5e-4}"
# K-FAC EWC (a later --workdir wins): factors from one sampled label per example, online and
# summed factors, then the exact-Fisher factors (the default since) over 2 seeds.
run kfac_ewc   --seeds 1 --sweep strength=1e2,1e3,1e4,1e5 --set "method_options={'fisher':'true'}"
run kfac_ewc   --seeds 1 --sweep strength=1e2,1e3,1e4,1e5 --workdir runs/sweep_kfac_ewc_sum \
    --set "method_options={'fisher':'true','mode':'sum'}"
run kfac_ewc   --seeds 2 --sweep strength=1e3,1e4,1e5 --workdir runs/sweep_kfac_ewc_exact
