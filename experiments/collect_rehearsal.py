"""Print the rehearsal tables of RESULTS.md (markdown) from runs/rehearsal/*/results.json.

    python experiments/collect_rehearsal.py [runs/rehearsal]
"""
import json
import pathlib
import sys

SCENARIOS = ("task", "domain", "class")
# Split MNIST: Hsu et al. 2018 (their "naive rehearsal" is ER; "SGD" fine-tuning; "offline" joint)
# and van de Ven & Tolias 2019 (None, Joint, LwF), as listed in ../shared/REFERENCES.md.
MNIST_PUBLISHED = {
    "none": ("87.19 / 59.21 / 19.90 (vdV19); 97.98 / 63.20 / 19.46 (Hsu)"),
    "joint": ("99.66 / 98.42 / 97.94 (vdV19); 99.52 / 98.59 / 97.53 (Hsu)"),
    "er": "99.40 / 95.16 / 90.78 (Hsu, naive rehearsal)",
    "gem": "98.42 / 96.16 / 92.20 (Hsu)",
    "lwf": "99.57 / 71.50 / 23.85 (vdV19); 99.60 / 71.02 / 24.17 (Hsu)",
}
# Split CIFAR-100: van de Ven, Tuytelaars & Tolias 2022 (Task / Domain / Class)
CIFAR_PUBLISHED = {
    "none": "61.43 / 18.42 / 7.71", "joint": "78.78 / 46.85 / 49.78",
    "ewc": "76.34 / 21.65 / 8.24", "si": "74.84 / 22.58 / 8.10", "lwf": "78.59 / 29.45 / 25.57",
    "er": "76.43 / 39.00 / 37.57", "agem": "73.30 / 20.51 / 20.38", "icarl": "– / – / 37.83",
}


def cell(entry):
    if entry is None:
        return "–"
    m = entry["metrics"]["acc"]
    return f"{100 * m['mean']:.2f} ± {100 * m['sem']:.2f}"


def load(path):
    return json.loads(path.read_text()) if path.is_file() else None


def table(rows, published, title):
    print(f"\n{title}\n")
    print("| method | Task-IL | Domain-IL | Class-IL | hparams | seeds | wall (train+eval, "
          "its scenarios) | published (Task / Domain / Class) |")
    print("|---|---|---|---|---|---|---|---|")
    for method, results in rows:
        entries, per_scenario = {}, {}
        seeds, wall = set(), 0.0
        for r in results:
            for s in SCENARIOS:
                if s in r["scenarios"]:
                    e = r["scenarios"][s]
                    entries[s] = e
                    per_scenario[s] = str(e["hparams"])
                    wall += e["timings"]["run_seconds"]
            seeds.add(r["config"]["seeds"])
        if not entries:
            continue
        hp = ({next(iter(per_scenario.values()))} if len(set(per_scenario.values())) == 1
              else {f"{s}: {h}" for s, h in per_scenario.items()})
        print(f"| {method} | " + " | ".join(cell(entries.get(s)) for s in SCENARIOS)
              + f" | {'; '.join(sorted(hp))} | {'/'.join(map(str, sorted(seeds)))} | "
              f"{wall / 60:.0f} min | {published.get(method, '–')} |")


def main(root="runs/rehearsal"):
    root = pathlib.Path(root)
    mnist = []
    for method in ("none", "joint", "er", "agem", "gem", "lwf", "derpp", "icarl"):
        dirs = [f"split_mnist_{method}"]
        if method == "gem":   # the 5-seed run (all scenarios) when present, else the 3-seed pair
            dirs = (["split_mnist_gem5"] if (root / "split_mnist_gem5" / "results.json").is_file()
                    else ["split_mnist_gem", "split_mnist_gem_td"])
        rs = [r for d in dirs if (r := load(root / d / "results.json"))]
        if rs:
            mnist.append((method, rs))
    table(mnist, MNIST_PUBLISHED, "Split MNIST (budget 100 per class)")
    cifar = []
    for method, dirs in (("none", ["none"]), ("joint", ["joint"]), ("ewc", ["ewc_td", "ewc_c"]),
                         ("si", ["si_t", "si_d", "si_c"]), ("lwf", ["lwf"]), ("er", ["er"]),
                         ("agem", ["agem"]), ("derpp", ["derpp"]), ("icarl", ["icarl"])):
        rs = [r for d in dirs if (r := load(root / "split_cifar100" / d / "results.json"))]
        if rs:
            cifar.append((method, rs))
    table(cifar, CIFAR_PUBLISHED, "Split CIFAR-100 (reduced protocol, see above)")


if __name__ == "__main__":
    main(*sys.argv[1:])
