"""Split CIFAR-100 with the reduced ResNet-18, the protocol of GEM (Lopez-Paz & Ranzato 2017)
and A-GEM (Chaudhry et al. 2019): 20 tasks of 5 consecutive classes, ResNet-18 with 20 base
channels (``cljax.nn.ResNet18``, BatchNorm on batch statistics, see ``cljax.nn.resnet``), one
pass over each task's 2,500 training images (250 steps of batch 10), plain SGD lr 0.1 (GEM's
setting; A-GEM uses 0.03). Task-IL uses one 5-way head per task; Class-IL one 100-way head.
``eval_chunk`` 500 = one task's test set, so no zero padding enters BatchNorm's statistics.

    cljax run split_cifar100_resnet --method none --seeds 3

Needs the model kind ``resnet18`` in the experiment's model registry:
``ResNet18(num_outputs, num_heads=num_heads, nf=model["nf"])``.
"""


def get_config() -> dict:
    return {
        "dataset": "cifar100",
        "stream": "split",
        "stream_options": {"tasks": [list(range(5 * t, 5 * t + 5)) for t in range(20)]},
        "scenarios": ["task", "class"],
        "model": {"kind": "resnet18", "nf": 20},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "steps": 250,
        "batch_size": 10,
        "method": "none",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 500,
    }
