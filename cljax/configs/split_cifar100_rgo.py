"""20-split CIFAR-100 for RGO (Liu & Liu 2022: 82.22 %, 5 seeds), on the reduced ResNet-18.

20 tasks of 5 classes, one head per task (Task-IL). The schedule is the paper's, from its
"Architectures and training details" as a reproducibility report of the ICLR paper quotes it
(the full text is not readable here): "MNIST variants are trained 1000 steps while CIFAR and mini
ImageNet are trained 2000 steps. Batchsize is set at 10". So 2000 steps of batch 10 per task, 8
draws of each of a task's 2,500 images on average. The network is the reduced ResNet-18 (20
base channels, batch-statistics BatchNorm: ``cljax.nn.ResNet18``) of the GEM / A-GEM /
ORTHOG-SUBSPACE benchmark whose name Table 1 uses (``split_cifar100_resnet.py``), plain SGD lr
0.1, RGO α = 1 with its feature encoding layer (``--method rgo``; ``rgo2`` without it). RGO's
projections act on every conv's im2col patch dimension. ``eval_chunk`` 500 = a task's test set.

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
        "steps": 2000,
        "epochs": None,
        "batch_size": 10,
        "method": "rgo",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 500,
    }
