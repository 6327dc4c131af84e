"""Split CIFAR-100 in A-GEM's protocol (Chaudhry et al. 2019, ICLR; code facebookresearch/agem,
``conv_split_cifar.py``), on the reduced ResNet-18.

Their protocol: CIFAR-100 cut into 20 tasks of 5 classes; the first 3 tasks (classes 0–14) are
kept for cross-validating the hyperparameters, and the other 17 are trained and reported. Each
run shuffles classes 15–99 (``np.random.shuffle`` seeded by the run) and deals them into the 17
tasks; a single pass at batch 10 over each task's 2,500 training images (250 steps), plain SGD,
ResNet-18 with 3× fewer feature maps (their RESNET-S, "the same resnet-18 as used in GEM":
3×3 first conv, 20 / 40 / 80 / 160 channels; ``cljax.nn.ResNet18`` with nf 20), one 5-way head
per task (theirs: one 100-way layer masked to the task's classes — the same loss), every task's
500 test images. A-GEM keeps 13 examples per class (65 per task) and draws its reference batch
of 256 from the memory without replacement, the whole memory while it holds fewer. The
published values (Table 4 of the paper's appendix E, A_T over the 17 tasks, 5 runs): A-GEM 62.3
± 1.24, GEM 61.2, progressive networks 59.2, iCaRL 50.1, SI 47.1, MAS 44.2, VAN 42.9, EWC 42.4,
RWalk 40.9, multitask 68.3; learning rates from their appendix G: 0.03 for A-GEM, EWC (λ 10),
MAS (λ 0.1) and multitask, 0.01 for fine-tuning (VAN) and SI (λ 0.1).

Here: each task trains one shuffled pass over its examples (``sampling="shuffled"``), and the
classes are dealt into the tasks per seed by ``stream_options.class_order`` (numpy's
``default_rng(seed)``, not their draws), which ``cljax bench agem2019_split_cifar100`` sets to
each seed; the registered protocol carries each method's memory and learning rate.

    cljax bench agem2019_split_cifar100 --methods agem,none
    cljax run split_cifar100_agem --method none --set optimizer.learning_rate=0.01
"""


def get_config() -> dict:
    return {
        "dataset": "cifar100",
        "stream": "split",
        "stream_options": {"tasks": [list(range(5 * t, 5 * t + 5)) for t in range(3, 20)]},
        "scenarios": ["task"],
        "model": {"kind": "resnet18", "nf": 20},
        "optimizer": {"name": "sgd", "learning_rate": 0.03},
        "steps": 250,
        "batch_size": 10,
        "sampling": "shuffled",
        "method": "none",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 500,
    }
