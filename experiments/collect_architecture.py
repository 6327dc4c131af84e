"""Print the architecture family's tables of RESULTS.md (markdown) from runs/architecture/*/.

    python experiments/collect_architecture.py [runs/architecture]

The runs are ``experiments/architecture.sh``'s: ``<protocol>_<method>[_<scenario>]`` for the
protocols ``smnist`` (Split MNIST Task-IL), ``agem`` / ``agem1k`` (Permuted MNIST in A-GEM's
protocol, full / reduced to 1,000 examples per task) and ``cifar`` (10-split CIFAR-100 in GPM's
protocol, reduced). One row per run directory: ACC, BWT and
plasticity (the mean accuracy of each task right after training it), mean ± SEM over the run's
seeds (%), the wall time of training and evaluation, and the published number of
../shared/REFERENCES.md next to it.
"""
import json
import pathlib
import sys

from cljax.metrics import mean_and_sem

# Chaudhry et al. 2019 (A-GEM), Table 4, permuted MNIST, ACC over the 17 reported tasks (%)
AGEM_PUBLISHED = {"agem": "89.1 ± 0.14", "ewc": "68.3", "mas": "69.6", "pnn": "93.5",
                  "joint": "95.3 (multitask)"}
# Saha et al. 2021 (GPM), 10-split CIFAR-100, ACC (%)
CIFAR_PUBLISHED = {"hat": "72.06", "joint": "79.58 (multitask)"}
PROTOCOLS = (
    ("smnist", "Split MNIST, Task-IL (van de Ven & Tolias 2019 protocol)", {}),
    ("agem", "Permuted MNIST in A-GEM's ICLR 2019 protocol (17 tasks of 55,000 examples, one "
             "pass at batch 10, SGD, 784-256-256)", AGEM_PUBLISHED),
    ("agem1k", "Permuted MNIST in A-GEM's protocol REDUCED to 1,000 examples per task (100 "
               "steps), flax's default initialisation", AGEM_PUBLISHED),
    ("cifar", "10-split CIFAR-100 in GPM's protocol, REDUCED to one epoch per task (AlexNet, "
              "Task-IL)", CIFAR_PUBLISHED),
)


def pct(values):
    if not values:
        return "diverged"
    mean, sem = mean_and_sem(values)
    return f"{100 * mean:.2f} ± {100 * sem:.2f}"


def row(d, published):
    result = json.loads((d / "results.json").read_text())
    config = result["config"]
    method = config["method"]
    lines = []
    for scenario, entry in result["scenarios"].items():
        m = entry["metrics"]
        diverged = entry["diverged"]
        note = f" ({len(diverged)} of {config['seeds']} seeds diverged)" if diverged else ""
        lr = config["optimizer"].get("learning_rate")
        hp = {k: v for k, v in entry["hparams"].items()} or ""
        options = {k: (f"{len(v)} values" if isinstance(v, list) else v)
                   for k, v in config.get("method_options", {}).items()} or ""
        minutes = entry["timings"]["run_seconds"] / 60
        pub = published.get(method, "–") if scenario != "task" or method not in (
            "none", "joint") else "–"
        lines.append(f"| {method} | {scenario} | {pct(m['acc']['per_run'])}{note} | "
                     f"{pct(m['bwt']['per_run'])} | {pct(m['plasticity']['per_run'])} | "
                     f"lr {lr} {hp} {options} | {config['seeds']} | {minutes:.1f} min | {pub} |")
    return lines


def main(root="runs/architecture"):
    root = pathlib.Path(root)
    for prefix, title, published in PROTOCOLS:
        rows = [line for d in sorted(root.glob(f"{prefix}_*"))
                if (d / "results.json").is_file() for line in row(d, published)]
        if not rows:
            continue
        print(f"\n{title}\n")
        print("| method | scenario | ACC % | BWT % | plasticity % | settings | seeds | "
              "wall (train+eval) | published ACC % |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
