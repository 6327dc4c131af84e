"""Print the gradient-projection tables of RESULTS.md (markdown) from runs/projection/*/results.json.

    python experiments/collect_projection.py [runs/projection]

One table per protocol (Permuted MNIST in GPM's protocol; RGO's 20-task permuted / rotated
MNIST; 10-split CIFAR-100), ACC and BWT (mean ± SEM over the run's seeds, %), next to the
published numbers of ../shared/REFERENCES.md.

A run may come in parts: ``<prefix>_<method>_seed<N>`` is the same config run from base seed N
(``--seed N``; its seeds are ``split(key(N), seeds)``, independent of the base run's), and its
per-seed metrics are pooled with ``<prefix>_<method>``'s into one row. Parts must agree on every
config entry except ``seed`` / ``seeds`` and the ``method_options`` in ``REARRANGEMENTS``
(options that change how a method computes its step, not the step), and have different base seeds.
"""
import json
import pathlib
import re
import sys

from cljax.metrics import mean_and_sem

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


PART = re.compile(r"_seed\d+$")
# method_options that rearrange a method's arithmetic without changing its steps (to rounding;
# tests/test_projection_methods.py and tests/test_ogd.py): the fused gradients of RGO, GPM and
# OGD, OGD's factored store and its deferred update
REARRANGEMENTS = frozenset({"fused_gradient", "factored", "deferred"})


def runs_of(root, prefix, method):
    """The run directories of a method: ``<prefix>_<method>`` and its variants
    ``<prefix>_<method>_<tag>`` (e.g. EWC at several λ), each with its seed parts, as
    ``{run name: [directories]}``."""
    runs = {}
    for d in sorted(root.glob(f"{prefix}_{method}*")):
        if d.name == f"{prefix}_{method}" or d.name.startswith(f"{prefix}_{method}_"):
            runs.setdefault(PART.sub("", d.name), []).append(d)
    return runs


def pooled(parts):
    """One result from a run's parts: per-seed ACC / BWT pooled, seeds and wall time summed."""
    results = [json.loads((d / "results.json").read_text()) for d in parts
               if (d / "results.json").is_file()]
    if not results:
        return None
    first = results[0]

    def strip(c):
        opts = {k: v for k, v in c.get("method_options", {}).items() if k not in REARRANGEMENTS}
        return {**{k: v for k, v in c.items() if k not in ("seed", "seeds")},
                "method_options": opts}

    for d, r in zip(parts, results):
        if strip(r["config"]) != strip(first["config"]):
            raise ValueError(f"{d}: its config differs from {parts[0]}'s beyond seed / seeds / "
                             f"{sorted(REARRANGEMENTS)}")
    bases = [r["config"]["seed"] for r in results]
    if len(set(bases)) != len(bases):
        raise ValueError(f"parts {[str(d) for d in parts]} share a base seed: {bases}")
    entries = [next(iter(r["scenarios"].values())) for r in results]
    metrics = {}
    for name in ("acc", "bwt"):
        per_run = [v for e in entries for v in e["metrics"][name]["per_run"]]
        mean, sem = mean_and_sem(per_run) if per_run else (None, None)
        metrics[name] = {"mean": mean, "sem": sem}
    diverged = [d for e in entries for d in e["diverged"]]
    return {"metrics": metrics, "diverged": diverged, "hparams": entries[0]["hparams"],
            "seeds": sum(r["config"]["seeds"] for r in results),
            "epochs": first["config"].get("epochs"),
            "minutes": sum(e["timings"]["run_seconds"] for e in entries) / 60,
            "parts": len(results)}


def main(root="runs/projection"):
    root = pathlib.Path(root)
    for prefix, title, published in PROTOCOLS:
        rows = []
        for method in METHODS:
            for parts in runs_of(root, prefix, method).values():
                r = pooled(parts)
                if r is None:
                    continue
                m = r["metrics"]
                diverged = (f" ({len(r['diverged'])} of {r['seeds']} seeds diverged, "
                            f"task {min(d['task'] for d in r['diverged']) + 1})"
                            if r["diverged"] else "")
                wall = f"{r['minutes']:.0f} min" + (f" ({r['parts']} parts)"
                                                    if r["parts"] > 1 else "")
                rows.append(f"| {method} | {pct(m['acc'])}{diverged} | {pct(m['bwt'])} | "
                            f"{r['hparams']} | {r['seeds']} | {r['epochs'] or '–'} | {wall} | "
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
