"""Rotated MNIST with 20 tasks, the protocol of stable SGD and MC-SGD (Mirzadeh et al. 2020,
NeurIPS; Mirzadeh et al. 2021, ICLR).

From their code (imirzadeh/stable-continual-learning, ``stable_sgd/data_utils.py``): task t
(1-based) rotates every image by (t − 1)·10° − U(0, 10)° (:func:`cljax.data.mirzadeh_rotation_angles`);
otherwise as ``permuted_mnist_mirzadeh.py``: MNIST's whole training split per task seen once at
batch 10 (6,000 steps), MLP 784-256-256 with PyTorch's initialisation, one shared head
(Domain-IL), SGD with momentum 0.8 and a new optimizer per task, the "naive" regime (lr 0.01);
their stable regime on rotated MNIST decays by 0.5 per task: ``--regime stable_sgd
--regime-option decay=0.5``.

Differences from their code: a shuffled pass where their loader keeps MNIST's stored order; the
angles are drawn once from ``ANGLE_SEED`` for every seed of a run (theirs: per run); rotation by
``scipy.ndimage.rotate`` (linear) where theirs is torchvision's.

    cljax run rotated_mnist_mirzadeh --method none --seeds 5
    cljax bench mirzadeh_rotated_mnist
"""
from cljax.data import mirzadeh_rotation_angles

ANGLE_SEED = 0


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "rotated",
        "stream_options": {"angles": [float(a) for a in
                                      mirzadeh_rotation_angles(20, seed=ANGLE_SEED)]},
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
