"""20-split CIFAR-100 for RGO (Liu & Liu 2022: 82.22 %, 5 seeds), on the reduced ResNet-18.

20 tasks of 5 classes, one head per task (Task-IL). Our references do not give RGO's CIFAR
network and schedule; this config uses the reduced ResNet-18 (20 base channels, batch-statistics
BatchNorm: ``cljax.nn.ResNet18``) of the GEM / A-GEM protocol (``split_cifar100_resnet.py``) with
several passes per task (``epochs``), plain SGD lr 0.1, batch 10, RGO α = 1 with its feature
encoding layer (``--method rgo``; ``rgo2`` without it). RGO's projections act on every conv's
im2col patch dimension. ``eval_chunk`` 500 = a task's test set.

    cljax run split_cifar100_rgo --method rgo --seeds 3
"""


def get_config() -> dict:
    return {
        "dataset": "cifar100",
        "stream": "split",
        "stream_options": {"tasks": [list(range(5 * t, 5 * t + 5)) for t in range(20)]},
        "scenarios": ["task"],
        "model": {"kind": "resnet18", "nf": 20},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "steps": 1,
        "epochs": 5,
        "batch_size": 10,
        "method": "rgo",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 500,
    }
