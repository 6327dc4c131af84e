"""Permuted MNIST with 20 tasks, the first benchmark of RGO's Table 1 (Liu & Liu 2022).

RGO's Table 1 uses the four 20-task benchmarks of Chaudhry et al. 2020 ("Continual learning in
low-rank orthogonal subspaces", code arslan-chaudhry/orthog_subspace, ``replicate_results.sh``
and ``fc_permute_mnist.py``); this is their permuted MNIST: 20 tasks (their 3 cross-validation
tasks are other permutations and are not trained here), every task permuted, 10,000 training
images per task seen once as a shuffled pass at batch 10 (1,000 steps — RGO's text: "1000
steps" on MNIST), plain SGD lr 0.1, MLP 784-256-256 with orthogonal weights and biases 0.1 (their
``FC-S``), one shared 10-way head (Domain-IL), every task's whole test set. Their baselines' λ /
memory: EWC 10, A-GEM and ER one example per class with a memory batch of 10. RGO's α = 1
(``hparams.alpha``); RGO-2 is ``--method rgo2``.

Differences from their code: the 10,000 images are the first of MNIST's training split for every
task (theirs: a random 10,000 of TensorFlow's 55,000 per task and run), and the permutations are
fixed by ``stream_options.seed`` for every seed of a run (theirs change with the run).

    cljax run permuted_mnist_rgo --method rgo --seeds 5
    cljax bench rgo2022_permuted_mnist
"""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "permuted",
        "stream_options": {"num_tasks": 20, "seed": 0, "pad_to": None, "permute_first": True,
                           "max_train_per_task": 10000},
        "scenarios": ["domain"],
        "model": {"kind": "mlp", "widths": [256, 256], "kernel_init": "orthogonal",
                  "bias_init": 0.1},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "steps": 1000,
        "batch_size": 10,
        "sampling": "shuffled",
        "method": "rgo",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
