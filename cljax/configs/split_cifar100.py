"""Split CIFAR-100, protocol of van de Ven, Tuytelaars & Tolias 2022 ("Three types of
incremental learning", Nature Machine Intelligence; code GMvandeVen/continual-learning).

10 tasks of 10 classes (0–9, 10–19, …: the natural class order; their code permutes the classes
per seed). Conv layers (5 × 3×3, 16 channels doubling at each stride-2 layer, BatchNorm, the
``C3-5x16-bn`` encoder of :mod:`cljax.nn.encoder`) pre-trained on CIFAR-10 for 100 epochs (Adam
1e-4, batch 256, random crops and flips) and frozen: the pre-training is a cached step of its own
(``runs/cache/encoder_<hash>.msgpack``, trained on first use, see :mod:`cljax.pretrain`), and,
the convolutions being frozen, every image's 1024 features are computed once, so the continual
runs train the fully connected part alone: 1024-2000-2000 ReLU and the output layer (10 heads of
10 in Task-IL, one 10-way head in Domain-IL, one 100-way head in Class-IL). Adam lr 1e-4
(β 0.9, 0.999), 5000 iterations per task, batch 256; memories 100 examples per class. They
report 10 seeds. Full protocol:

    cljax run split_cifar100 --method er --seeds 3

On a CPU, `--steps` and `--set features.pretrain.epochs=...` shorten it (say so next to any
number produced that way; RESULTS.md has the reduced runs and their wall times). The encoder
trains on all 50,000 CIFAR-10 training images and reports its CIFAR-10 test accuracy; RESULTS.md's
reduced CIFAR-100 rows used an encoder trained before the test split was available, on 45,000
images with 5,000 held out: `--set features.pretrain.holdout=5000` finds it in the cache again.
"""


def get_config() -> dict:
    return {
        "dataset": "cifar100",
        "stream": "split",
        "stream_options": {"tasks": [list(range(10 * t, 10 * t + 10)) for t in range(10)]},
        "features": {"pretrain": {"dataset": "cifar10", "epochs": 100, "batch_size": 256,
                                  "learning_rate": 1e-4, "widths": [2000, 2000]},
                     "cache_dir": "runs/cache"},
        "scenarios": ["task", "domain", "class"],
        "model": {"kind": "mlp", "widths": [2000, 2000]},
        "optimizer": {"name": "adam", "learning_rate": 1e-4, "b1": 0.9, "b2": 0.999},
        "steps": 5000,
        "batch_size": 256,
        "method": "none",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
