"""Print the generative-replay tables of RESULTS.md (markdown) from runs/generative/*/.

    python experiments/collect_generative.py [runs/generative]

The runs are ``experiments/generative.sh``'s: ``smnist_<method>`` (Split MNIST, van de Ven &
Tolias 2019's protocol) and ``scifar100_<method>`` (Split CIFAR-100, van de Ven et al. 2022's,
REDUCED as that script says). The table layout is the rehearsal tables' (collect_rehearsal.py).
"""
import pathlib
import sys

from collect_rehearsal import load, table

# Split MNIST (Task / Domain / Class): Hsu et al. 2018's DGR, as ../shared/REFERENCES.md lists it.
MNIST_PUBLISHED = {"dgr": "99.47 / 95.74 / 91.24 (Hsu)"}
# Split CIFAR-100 (Task / Domain / Class): van de Ven, Tuytelaars & Tolias 2022.
CIFAR_PUBLISHED = {"dgr": "71.40 / 20.52 / 9.67", "bir": "79.14 / 30.26 / 25.81"}


def main(root="runs/generative"):
    root = pathlib.Path(root)
    for part, methods, published, title in (
            ("smnist", ("dgr", "dgr_distill"), MNIST_PUBLISHED,
             "Split MNIST, van de Ven & Tolias 2019's protocol"),
            ("scifar100", ("dgr", "bir"), CIFAR_PUBLISHED,
             "Split CIFAR-100, van de Ven et al. 2022's protocol, REDUCED")):
        rows = [(m, [r]) for m in methods if (r := load(root / f"{part}_{m}" / "results.json"))]
        if rows:
            table(rows, published, title)


if __name__ == "__main__":
    main(*sys.argv[1:])
