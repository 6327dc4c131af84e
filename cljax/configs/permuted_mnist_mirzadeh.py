"""Permuted MNIST with 20 tasks, the protocol of stable SGD and MC-SGD (Mirzadeh et al. 2020,
"Understanding the role of training regimes in continual learning", NeurIPS; Mirzadeh et al.
2021, "Linear mode connectivity in multitask and continual learning", ICLR).

From their code (imirzadeh/stable-continual-learning, ``stable_sgd/data_utils.py``,
``stable_sgd/main.py``, ``replicate_experiment_2.sh``): 20 tasks, the first the original images
and every other one a random pixel permutation; each task is MNIST's whole training split
(60,000 images) seen once at batch 10 (6,000 steps); MLP 784-256-256 with PyTorch's default
initialisation and one shared 10-way head (Domain-IL); SGD with momentum 0.8 and a new
optimizer for every task; every task's whole test set. This config is their "naive" regime
(lr 0.01, no dropout); ``--regime stable_sgd`` is their stable one (lr 0.1 decayed by 0.8 per
task, dropout 0.5; :mod:`cljax.regimes`).

Differences from their code: their loader does not shuffle (every pass is MNIST's stored order);
ours is a shuffled pass (``sampling="shuffled"``); biases start at 0 (theirs: PyTorch's uniform);
the permutations are fixed by ``stream_options.seed`` for every seed of a run (theirs change
with the run).

    cljax run permuted_mnist_mirzadeh --method none --seeds 5
    cljax run permuted_mnist_mirzadeh --method none --regime stable_sgd --seeds 5
    cljax bench mirzadeh_permuted_mnist
"""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "permuted",
        "stream_options": {"num_tasks": 20, "seed": 0, "pad_to": None, "permute_first": False},
        "scenarios": ["domain"],
        "model": {"kind": "mlp", "widths": [256, 256], "kernel_init": "pytorch"},
        "optimizer": {"name": "sgd", "learning_rate": 0.01, "momentum": 0.8},
        "steps": 6000,
        "batch_size": 10,
        "sampling": "shuffled",
        "reset_optimizer": True,
        "method": "none",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
