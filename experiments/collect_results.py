"""Print the result tables (markdown): Split MNIST from runs/final_*/results.json, Permuted MNIST
from runs/perm_*/results.json.

    python experiments/collect_results.py [runs_dir]
"""
import json
import pathlib
import sys

PUBLISHED = {  # van de Ven & Tolias 2019 (Task / Domain / Class); MAS and L2 from Hsu et al. 2018
    "none": (87.19, 59.21, 19.90), "joint": (99.66, 98.42, 97.94), "ewc": (98.64, 63.95, 20.01),
    "online_ewc": (99.12, 64.32, 19.96), "si": (99.09, 65.36, 19.99), "mas": (99.22, None, None),
    "l2": (98.18, None, None), "kfac_ewc": (None, None, None), "kfac_ewc_true": (None, None, None),
    "ncl": (None, None, None), "ncl_d0.1": (None, None, None), "ncl_d0.01": (None, None, None),
    "ncl_kfac": (None, None, None)}
PERMUTED = {"none": 78.51, "ewc": 94.31, "online_ewc": 94.42, "si": 95.33}  # Domain-IL, same paper


def fmt(entry):
    m = entry["metrics"]
    return (f"{100 * m['acc']['mean']:.2f} ± {100 * m['acc']['sem']:.2f}",
            f"{100 * m['bwt']['mean']:.2f} ± {100 * m['bwt']['sem']:.2f}")


def main(root="runs"):
    root = pathlib.Path(root)
    print("| method | hparams | seeds | Task-IL ACC | BWT | published* | wall (train+eval) |")
    print("|---|---|---|---|---|---|---|")
    for method in PUBLISHED:
        path = root / f"final_{method}" / "results.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        sc = r["scenarios"]["task"]
        acc, bwt = fmt(sc)
        pub = PUBLISHED[method][0]
        print(f"| {method} | {sc['hparams']} | {r['config']['seeds']} | {acc} | {bwt} | "
              f"{pub if pub is not None else '–'} | {sc['timings']['run_seconds']:.0f} s |")
    print()
    print("*van de Ven & Tolias 2019 (20 seeds, same protocol); MAS and L2: Hsu et al. 2018 "
          "(4 epochs per task instead of 2000 iterations).")
    paths = [root / f"final_{m}_dc" / "results.json" for m in ("ewc", "online_ewc", "si")]
    if any(p.exists() for p in paths):
        print()
        print("| method | scenario | best hparams (of the sweep) | seeds | ACC | BWT | published "
              "| every point: strength → ACC |")
        print("|---|---|---|---|---|---|---|---|")
    for method, path in zip(("ewc", "online_ewc", "si"), paths):
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        for col, scenario in ((1, "domain"), (2, "class")):
            sc = r["scenarios"][scenario]
            acc, bwt = fmt(sc)
            points = ", ".join(
                f"{p['hparams']['strength']:.0e}: {100 * p['metrics']['acc']['mean']:.2f}"
                for p in sc.get("sweep", []))
            print(f"| {method} | {scenario}-IL | {sc.get('best_hparams', sc['hparams'])} | "
                  f"{r['config']['seeds']} | {acc} | {bwt} | {PUBLISHED[method][col]} | {points} |")

    perm = [(m, root / f"perm_{m}" / "results.json") for m in PERMUTED]
    if any(p.exists() for _, p in perm):
        print()
        print("| method | hparams | seeds | Domain-IL ACC | BWT | published | wall (train+eval) |")
        print("|---|---|---|---|---|---|---|")
    for method, path in perm:
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        sc = r["scenarios"]["domain"]
        acc, bwt = fmt(sc)
        print(f"| {method} | {sc['hparams']} | {r['config']['seeds']} | {acc} | {bwt} | "
              f"{PERMUTED[method]} | {sc['timings']['run_seconds'] / 60:.0f} min |")


if __name__ == "__main__":
    main(*sys.argv[1:])
