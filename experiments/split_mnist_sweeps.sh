#!/usr/bin/env bash
# λ sweeps for Split MNIST Task-IL (van de Ven protocol), 2 seeds per value, each method's whole
# grid × seeds in one vmapped program. Outputs in runs/sweep_<method>/.
set -euo pipefail
run() { cljax run experiments/configs/split_mnist.py --scenarios task --seeds 2 --no-progress \
          --method "$1" --workdir "runs/sweep_$1" "${@:2}"; }
run ewc        --sweep strength=1e1,1e2,1e3,1e4,1e5,1e6
run online_ewc --sweep strength=1e1,1e2,1e3,1e4,1e5,1e6
run si         --sweep strength=0.1,1,10,100,1000
run mas        --sweep strength=0.1,1,10,100,1000
run l2         --sweep strength=1e-3,1e-2,1e-1,1,10
run ncl        --sweep strength=1e1,1e2,1e3,1e4,1e5
run kfac_ewc   --sweep strength=1e1,1e2,1e3,1e4,1e5,1e6
