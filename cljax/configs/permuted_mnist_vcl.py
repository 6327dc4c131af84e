"""Permuted MNIST in VCL's protocol (Nguyen, Li, Bui & Turner 2018, ICLR; code
nvcuong/variational-continual-learning, ``ddm/run_permuted.py``).

Their protocol: 10 tasks, each a fixed random pixel permutation of MNIST (the first one too), the
60,000 training images (their train and validation splits together) and the 10,000 test images;
an MLP 784-100-100 with one shared 10-way head; Adam lr 10⁻³, batches of 256, 100 epochs per task
(≈ 23,438 steps); VCL with 10 Monte Carlo samples per step, 100 at prediction, means initialised
by a maximum-likelihood fit of task 1 (another 100 epochs), log-variances −6, coresets of 200
examples per task (random or k-center) fine-tuned on for 100 epochs before prediction.

Here: the same, with batches drawn i.i.d. from the task's examples outside its coreset (theirs:
shuffled epochs), the coreset fine-tuning's batches drawn with replacement, the means' initial
truncated normal (σ 0.1) but constant biases 0.1 (theirs: truncated normal too), and the
permutations fixed by ``stream_options.seed`` (theirs: numpy seeds 0..9).

    cljax run permuted_mnist_vcl --method vcl --seeds 3
    cljax run permuted_mnist_vcl --method vcl \\
        --set "method_options={'coreset': 'kcenter', 'coreset_size': 200, 'ml_init_steps': 23438}"
"""

STEPS = 23438          # 100 epochs of 60,000 examples at batch 256


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "permuted",
        "stream_options": {"num_tasks": 10, "seed": 0, "pad_to": None, "permute_first": True},
        "scenarios": ["domain"],
        "model": {"kind": "mlp", "widths": [100, 100], "kernel_stddev": 0.1, "bias_init": 0.1},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "steps": STEPS,
        "batch_size": 256,
        "method": "vcl",
        "method_options": {"ml_init_steps": STEPS, "ml_init_batch": 256,
                           "finetune_epochs": 100, "finetune_batch": 256},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
        "reset_optimizer": True,       # theirs: a new Adam for every task
    }
