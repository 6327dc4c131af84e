#!/usr/bin/env bash
# RGO's own MNIST protocol: permuted and rotated MNIST with 20 tasks
# (cljax/configs/{permuted,rotated}_mnist_rgo.py: MLP 784-256-256, shared head, SGD 0.1,
# batch 10, one pass per task), RGO, RGO-2, GPM, OGD, EWC, A-GEM and SGD (fine-tuning), 5 seeds
# each. PROTOCOLS selects (default "permuted rotated"). Outputs in
# runs/projection/{pmnist20,rmnist20}_<method>/; experiments/collect_projection.py prints the table.
set -euo pipefail
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-../shared/tfds}
out=runs/projection
for protocol in ${PROTOCOLS:-permuted rotated}; do
  tag=${protocol:0:1}mnist20
  run() { cljax run ${protocol}_mnist_rgo --no-progress --seeds 5 "$@"; }
  run --method rgo --workdir $out/${tag}_rgo
  run --method rgo2 --workdir $out/${tag}_rgo2
  run --method gpm --workdir $out/${tag}_gpm
  # EWC on plain SGD lr 0.1: lr·λ·ΣF must stay < 2 (λ = 1000 diverges on the GPM protocol)
  run --method ewc --set "hparams={'strength': 10.0}" --workdir $out/${tag}_ewc_l10
  run --method agem --set "method_options={'per_class': 25}" --workdir $out/${tag}_agem
  run --method none --workdir $out/${tag}_none
  # OGD's gradient store grows to 20 × 200 gradients, so it runs in parts of one seed each
  # (base seeds OGD_SEEDS, default 0 1 2 3 4), pooled by collect_projection.py, with the deferred
  # update (the same steps as the fused projection to rounding, 1.8-2.7x faster; BENCHMARKS.md)
  for s in ${OGD_SEEDS:-0 1 2 3 4}; do
    run --method ogd --seed $s --seeds 1 --set "method_options={'deferred': True}" \
      --workdir $out/${tag}_ogd_seed$s
  done
done
