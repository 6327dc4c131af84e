"""Split MNIST in VCL's protocol (Nguyen, Li, Bui & Turner 2018, ICLR; code
nvcuong/variational-continual-learning, ``ddm/run_split.py``).

Their protocol: 5 tasks of two digits (0/1, 2/3, 4/5, 6/7, 8/9), all of each task's training
images (train and validation splits), an MLP 784-256-256 with one 2-way head per task
(Task-IL); Adam lr 10⁻³, full-batch gradient steps, 120 epochs per task; VCL with 10 Monte Carlo
samples per step, 100 at prediction, means initialised by a maximum-likelihood fit of task 1
(120 full-batch epochs), log-variances −6, coresets of 40 examples per task fine-tuned on (each
task's own, for its head) for 120 epochs before prediction.

Here: the same, with "full batch" as 12,000 examples drawn i.i.d. from the task's examples
outside its coreset (the tasks hold 11,263–12,665), and constant initial biases 0.1.

    cljax run split_mnist_vcl --method vcl --seeds 5
"""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "split",
        "stream_options": {"tasks": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]},
        "scenarios": ["task"],
        "model": {"kind": "mlp", "widths": [256, 256], "kernel_stddev": 0.1, "bias_init": 0.1},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "steps": 120,
        "batch_size": 12000,
        "method": "vcl",
        "method_options": {"ml_init_steps": 120, "ml_init_batch": 12000,
                           "finetune_epochs": 120, "finetune_batch": 40},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
        "reset_optimizer": True,       # theirs: a new Adam for every task
    }
