"""Print the gradient-projection tables of RESULTS.md (markdown) from runs/projection/*/results.json.

    python experiments/collect_projection.py [runs/projection]

One table per protocol (Permuted MNIST in GPM's protocol; RGO's 20-task permuted / rotated
MNIST), ACC and BWT (mean ± SEM over the run's seeds, %), next to the published numbers of
../shared/REFERENCES.md.
"""
import json
import pathlib
import sys

METHODS = ("gpm", "rgo", "rgo2", "ogd", "ewc", "agem", "er", "none", "joint")
# Saha et al. 2021, Table 2 (Permuted MNIST, 10 tasks): ACC / BWT (%)
GPM_PUBLISHED = {"gpm": "93.91 ± 0.16 / −3", "ewc": "89.97 / −4", "agem": "83.56 / −14",
                 "er": "87.24 / −11 (ER_Res)", "ogd": "82.73 / −14", "joint": "96.70 (multitask)"}
# Saha et al. 2021 (10-split CIFAR-100): ACC (%), and BWT where REFERENCES.md gives it
GPM_CIFAR_PUBLISHED = {"gpm": "72.48 ± 0.40 / −0.9", "ewc": "68.80", "agem": "63.98",
                       "er": "71.73 (ER_Res)", "joint": "79.58 (multitask)"}
PROTOCOLS = (("pmnist", "Permuted MNIST, GPM protocol (10 tasks, 784-100-100, SGD 0.01, "
                        "batch 10, 5 epochs)", GPM_PUBLISHED),
             ("pmnist20", "Permuted MNIST, 20 tasks (RGO's MNIST table)", {}),
             ("rmnist20", "Rotated MNIST, 20 tasks (RGO's MNIST table)", {}),
             ("cifar100", "10-split CIFAR-100, GPM protocol (AlexNet, Task-IL)",
              GPM_CIFAR_PUBLISHED))


def pct(m):
    if m["mean"] is None:
        return "diverged"
    return f"{100 * m['mean']:.2f} ± {100 * m['sem']:.2f}"


def runs_of(root, prefix, method):
    """The run directories of a method: ``<prefix>_<method>`` and its variants
    ``<prefix>_<method>_<tag>`` (e.g. EWC at several λ)."""
    return sorted(d for d in root.glob(f"{prefix}_{method}*")
                  if d.name == f"{prefix}_{method}" or d.name.startswith(f"{prefix}_{method}_"))


def main(root="runs/projection"):
    root = pathlib.Path(root)
    for prefix, title, published in PROTOCOLS:
        rows = []
        for method in METHODS:
            for run in runs_of(root, prefix, method):
                path = run / "results.json"
                if not path.is_file():
                    continue
                r = json.loads(path.read_text())
                (scenario, e), = r["scenarios"].items()
                m = e["metrics"]
                diverged = (f" ({len(e['diverged'])} of {r['config']['seeds']} seeds diverged, "
                            f"task {min(d['task'] for d in e['diverged']) + 1})"
                            if e["diverged"] else "")
                rows.append(f"| {method} | {pct(m['acc'])}{diverged} | {pct(m['bwt'])} | "
                            f"{e['hparams']} | {r['config']['seeds']} | "
                            f"{r['config'].get('epochs') or '–'} | "
                            f"{e['timings']['run_seconds'] / 60:.0f} min | "
                            f"{published.get(method, '–')} |")
        if not rows:
            continue
        print(f"\n{title}\n")
        print("| method | ACC % | BWT % | hparams | seeds | epochs | wall (train+eval) | "
              "published ACC / BWT |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
