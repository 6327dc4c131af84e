"""Print the VCL tables of RESULTS.md (markdown) from runs/bayesian/*/.

    python experiments/collect_bayesian.py [runs/bayesian]

The runs are ``experiments/bayesian.sh``'s: ``<protocol>_<method>[_<coreset>]`` for ``smnist``
(Split MNIST Task-IL, VCL's protocol) and ``pmnist`` (Permuted MNIST, VCL's protocol, 5 tasks),
both reduced as that script says. One row per run: the average accuracy over the tasks seen after
each task (the curve of VCL's figures), ACC and BWT, mean ± SEM over the seeds (%), the wall
time, and the values of the authors' code next to it.
"""
import json
import pathlib
import sys

import numpy as np

from cljax.metrics import mean_and_sem

# Read off the figures of the authors' code README (nvcuong/variational-continual-learning,
# ddm/results/permuted.jpg and split.jpg: one run of ddm/run_permuted.py with 5 tasks and of
# ddm/run_split.py): the average accuracy after the last task, ±0.001 (the figures' resolution).
# The paper's own figure values (arXiv 1710.10628, Figures 2 and 4) are not in our sources.
AUTHORS_CODE = {
    "smnist": {"vcl": "≈ 95.5", "vcl_random": "≈ 96.9", "vcl_kcenter": "≈ 98.4"},
    "pmnist": {"vcl": "≈ 93.3", "vcl_random": "≈ 96.3", "vcl_kcenter": "≈ 96.2"},
}
PROTOCOLS = (
    ("smnist", "Split MNIST, Task-IL, VCL's protocol (MLP 256-256, full batch, 120 epochs per "
               "task), REDUCED to 1 Monte Carlo sample per step"),
    ("pmnist", "Permuted MNIST, VCL's protocol (MLP 100-100, one head, batch 256), REDUCED to 5 "
               "tasks, 10 epochs per task, 1 Monte Carlo sample per step"),
)


def pct(values):
    mean, sem = mean_and_sem(values)
    return f"{100 * mean:.2f} ± {100 * sem:.2f}"


def curve(acc):
    """Mean over seeds of the average accuracy over tasks 1..t after task t."""
    acc = np.asarray(acc)                       # [R, T, T]
    T = acc.shape[1]
    return [100 * float(np.mean([acc[r, t, :t + 1].mean() for r in range(acc.shape[0])]))
            for t in range(T)]


def row(d, protocol):
    result = json.loads((d / "results.json").read_text())
    config = result["config"]
    (scenario, entry), = result["scenarios"].items()
    m = entry["metrics"]
    name = d.name.split("_", 1)[1]
    minutes = entry["timings"]["run_seconds"] / 60
    line = " → ".join(f"{v:.1f}" for v in curve(entry["accuracy"]))
    return (f"| {name} | {pct(m['acc']['per_run'])} | {pct(m['bwt']['per_run'])} | {line} | "
            f"{config['seeds']} | {minutes:.1f} min | "
            f"{AUTHORS_CODE[protocol].get(name, '–')} |")


def main(root):
    root = pathlib.Path(root)
    for protocol, title in PROTOCOLS:
        dirs = sorted(d for d in root.glob(f"{protocol}_*") if (d / "results.json").exists())
        if not dirs:
            continue
        print(f"\n### {title}\n")
        print("| method | ACC | BWT | average accuracy after task 1 → T | seeds | train + eval "
              "| authors' code (after the last task) |")
        print("|---|---|---|---|---|---|---|")
        for d in dirs:
            print(row(d, protocol))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bayesian")
