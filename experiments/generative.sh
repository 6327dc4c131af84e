#!/usr/bin/env bash
# Generative replay (issue 22) — DGR and DGR + distill — on Split MNIST in van de Ven & Tolias
# 2019's protocol (experiments/configs/split_mnist.py: MLP 784-400-400, Adam 1e-3, 2000 iterations
# per task, batch 128, Task / Domain / Class-IL) with their generator (a VAE 784-400-400-100,
# trained beside the classifier, one Adam 1e-3 step per classifier step; cljax/methods/
# generative_replay.py). Outputs in runs/generative/split_mnist_<method>/ (with the generator's
# samples after each task, samples_<scenario>.png); `python experiments/collect_generative.py`
# prints the table of RESULTS.md. SEEDS (default 5), METHODS (default "dgr dgr_distill").
set -euo pipefail
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-../shared/tfds}
out=runs/generative
for m in ${METHODS:-dgr dgr_distill}; do
  cljax run experiments/configs/split_mnist.py --method "$m" --seeds "${SEEDS:-5}" \
    --no-progress --workdir "$out/split_mnist_$m" "$@"
done
