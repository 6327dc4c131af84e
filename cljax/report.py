"""Write an experiment's outputs: ``results.json``, ``report.md`` and the plots."""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np

METRIC_NAMES = {"acc": "ACC", "bwt": "BWT", "fwt": "FWT", "forgetting": "Forgetting (max)",
                "forgetting_from_first": "Forgetting (first)", "plasticity": "Plasticity"}


def _pct(entry: dict) -> str:
    return f"{100 * entry['mean']:.2f} ± {100 * entry['sem']:.2f}"


def _analysis_section(name: str, analysis: dict) -> list[str]:
    lines = ["", f"## {name}-IL: flatness and the forgetting bound ({analysis['curvature']} of "
             f"each task's mean test loss at θ*_t; seed 000 eq. 19–20)"]
    for run in analysis["runs"]:
        flat, bound = run["flatness"], run["bound"]
        T = len(flat["lambda_max"])
        s = bound["summary"]
        final = s["final_forgetting"] + [float("nan")]
        lines += ["", f"Run {run['run']} ({run['seconds']:.1f} s):", "",
                  "| task | λ_max(H_t) | ‖∇ℓ_t(θ*_t)‖ | HVPs | ℓ_t(θ*_t) | forgetting ℓ_t(θ*_T) − ℓ_t(θ*_t) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| T{t + 1} | {flat['lambda_max'][t]:.4g} | {flat['grad_norm'][t]:.3g} | "
                  f"{flat['num_matvecs'][t]} | {flat['loss'][t]:.4g} | {final[t]:.4g} |"
                  for t in range(T)]
        lines += ["", "| pair (i, j) | measured ℓ_i(θ*_j) − ℓ_i(θ*_i) | ½ΔθᵀH_iΔθ | "
                  "½λ_max‖Δθ‖² | measured ≤ bound |", "|---|---|---|---|---|"]
        for i, j, m, q, b in zip(bound["pair_i"], bound["pair_j"], bound["measured"],
                                 bound["quadratic"], bound["bound"]):
            lines.append(f"| ({i + 1}, {j + 1}) | {m:.4g} | {q:.4g} | {b:.4g} | "
                         f"{'yes' if m <= b else 'no'} |")
        lines += ["", f"The bound holds for {100 * s['frac_measured_le_bound']:.0f} % of "
                  f"{s['num_pairs']} pairs; median measured/bound "
                  f"{s['median_ratio_measured_to_bound']:.3g}, measured/quadratic "
                  f"{s['median_ratio_measured_to_quadratic']:.3g}; Spearman(λ_max, final "
                  f"forgetting) = {s['spearman_lambda_max_forgetting']:.3g}."]
    return lines


def _diverged(gone: list, seeds: int) -> str:
    """``"k/S (seed s: task t, step n; ...)"``, or ``"0"``."""
    if not gone:
        return "0"
    where = "; ".join(f"seed {g['seed']}: task {g['task'] + 1}, step {g['step']}" for g in gone)
    return f"{len(gone)}/{seeds} ({where})"


def markdown_report(results: dict) -> str:
    """Tables of every metric (mean ± SEM over seeds, in %) and the mean accuracy matrices
    (one section per regime when the config has regimes)."""
    if "regimes" in results:
        parts = [f"# Regimes: {', '.join(results['regimes'])}", ""]
        for regime, sub in results["regimes"].items():
            text = markdown_report(sub).replace("\n## ", "\n### ")
            parts.append(f"## Regime `{regime}`: " + text.removeprefix("# "))
        return "\n".join(parts)
    cfg = results["config"]
    lines = [f"# {results['stream']['name']} — method `{cfg['method']}`", "",
             f"{cfg['seeds']} seed(s), {cfg['steps']} steps/task, batch {cfg['batch_size']}, "
             f"model {cfg['model']}, optimizer {cfg['optimizer']}, hparams {cfg['hparams']}.", "",
             "Accuracy metrics in % (mean ± SEM over seeds):", "",
             "| scenario | " + " | ".join(METRIC_NAMES.values()) + " |",
             "|---" * (len(METRIC_NAMES) + 1) + "|"]
    for name, sc in results["scenarios"].items():
        m = sc["metrics"]
        lines.append(f"| {name}-IL | " + " | ".join(_pct(m[k]) if k in m else "–"
                                                   for k in METRIC_NAMES) + " |")
    for name, sc in results["scenarios"].items():
        if "sweep" not in sc:
            continue
        lines += ["", f"## {name}-IL sweep (every point × {cfg['seeds']} seed(s) in one vmapped "
                  f"program; best by ACC: {sc['best_hparams']})", "",
                  "| hparams | ACC | BWT | Plasticity | Forgetting (max) | diverged runs |",
                  "|---|---|---|---|---|---|"]
        for p in sc["sweep"]:
            m = p["metrics"]
            lines.append(f"| {p['hparams']} | {_pct(m['acc'])} | {_pct(m['bwt'])} | "
                         f"{_pct(m['plasticity'])} | {_pct(m['forgetting'])} | "
                         f"{_diverged(p.get('diverged', []), cfg['seeds'])} |")
    for name, sc in results["scenarios"].items():
        if sc.get("diverged"):
            lines += ["", f"**{name}-IL: {_diverged(sc['diverged'], cfg['seeds'])} run(s) "
                      "diverged (non-finite training loss); the metrics above are over the "
                      "others.**"]
    for name, sc in results["scenarios"].items():
        R = 100 * np.nanmean(sc["accuracy"], axis=0)
        T = R.shape[0]
        best = f" at {sc['best_hparams']}" if "sweep" in sc else ""
        lines += ["", f"## {name}-IL: accuracy matrix{best} (row = after task i, column = task j, %)", "",
                  "| after \\ on | " + " | ".join(f"T{j + 1}" for j in range(T)) + " |",
                  "|---" * (T + 1) + "|"]
        lines += [f"| T{i + 1} | " + " | ".join(f"{R[i, j]:.2f}" for j in range(T)) + " |"
                  for i in range(T)]
        if "analysis" in sc:
            lines += _analysis_section(name, sc["analysis"])
        t = sc["timings"]
        lines += ["", f"Compile {t['compile_seconds']:.1f} s; training + evaluation "
                  f"{t['run_seconds']:.1f} s for {cfg['seeds']} vmapped seed(s)."]
    return "\n".join(lines) + "\n"


def plot_accuracy_matrices(results: dict, path: str | os.PathLike) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scs = results["scenarios"]
    fig, axes = plt.subplots(1, len(scs), figsize=(4.2 * len(scs), 3.8), squeeze=False)
    for ax, (name, sc) in zip(axes[0], scs.items()):
        R = 100 * np.nanmean(sc["accuracy"], axis=0)
        T = R.shape[0]
        im = ax.imshow(R, vmin=0, vmax=100, cmap="viridis")
        for i in range(T):
            for j in range(T):
                ax.text(j, i, f"{R[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if R[i, j] < 60 else "black")
        ax.set_xticks(range(T), [f"T{j + 1}" for j in range(T)])
        ax.set_yticks(range(T), [f"T{i + 1}" for i in range(T)])
        ax.set_xlabel("evaluated on task")
        ax.set_ylabel("after training task")
        ax.set_title(f"{name}-IL")
    fig.colorbar(im, ax=axes[0].tolist(), label="test accuracy (%)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_task_curves(results: dict, path: str | os.PathLike) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scs = results["scenarios"]
    fig, axes = plt.subplots(1, len(scs), figsize=(4.5 * len(scs), 3.6), squeeze=False)
    for ax, (name, sc) in zip(axes[0], scs.items()):
        acc = 100 * np.asarray(sc["accuracy"])
        acc = acc[~np.isnan(acc).any(axis=(1, 2))]  # diverged runs are NaN
        mean, T = acc.mean(0), acc.shape[-1]
        sem = acc.std(0, ddof=1) / np.sqrt(acc.shape[0]) if acc.shape[0] > 1 else 0 * mean
        x = np.arange(1, T + 1)
        for j in range(T):
            ax.errorbar(x[j:], mean[j:, j], yerr=sem[j:, j], marker="o", ms=3, capsize=2,
                        label=f"task {j + 1}")
        ax.set_xticks(x)
        ax.set_xlabel("after training task")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 101)
        ax.set_title(f"{name}-IL")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_stability_plasticity(results: dict, path: str | os.PathLike) -> None:
    """ACC, BWT and plasticity (mean R[t, t]) against the swept hyperparameter, per scenario."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = sorted(results["config"]["sweep"])
    scs = {n: sc for n, sc in results["scenarios"].items() if "sweep" in sc}
    fig, axes = plt.subplots(1, len(scs), figsize=(4.8 * len(scs), 3.8), squeeze=False)
    for ax, (name, sc) in zip(axes[0], scs.items()):
        pts = sc["sweep"]
        if len(swept) == 1:
            x = np.array([p["hparams"][swept[0]] for p in pts], dtype=float)
            xlabel = swept[0]
        else:
            x = np.arange(len(pts), dtype=float)
            xlabel = "grid point (" + ", ".join(swept) + ")"
        for key, label in (("acc", "ACC"), ("bwt", "BWT"), ("plasticity", "plasticity R[t,t]")):
            mean = np.array([100 * p["metrics"][key]["mean"] for p in pts])
            sem = np.array([100 * p["metrics"][key]["sem"] for p in pts])
            ax.errorbar(x, mean, yerr=sem, marker="o", ms=3, capsize=2, label=label)
        if len(swept) == 1 and np.all(x > 0) and x.max() / x.min() > 20:
            ax.set_xscale("log")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("%")
        ax.set_title(f"{name}-IL: stability–plasticity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict, workdir: str | os.PathLike) -> pathlib.Path:
    """Write results.json, report.md, accuracy_matrix.png and task_curves.png into ``workdir``
    (and stability_plasticity.png after a sweep)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (workdir / "report.md").write_text(markdown_report(results))
    if "regimes" in results:
        for regime, sub in results["regimes"].items():
            write_outputs(sub, workdir / regime)
        write_analysis_plots(results, workdir)
        return workdir
    write_analysis_plots(results, workdir)
    plot_accuracy_matrices(results, workdir / "accuracy_matrix.png")
    plot_task_curves(results, workdir / "task_curves.png")
    if results["config"].get("sweep"):
        plot_stability_plasticity(results, workdir / "stability_plasticity.png")
    return workdir


def _analysed(results: dict):
    """(label, scenario results) of every analysed scenario, across regimes."""
    if "regimes" in results:
        for regime, sub in results["regimes"].items():
            for label, sc in _analysed(sub):
                yield f"{regime} {label}", sc
        return
    for name, sc in results["scenarios"].items():
        if "analysis" in sc:
            yield f"{name}-IL", sc


def write_analysis_plots(results: dict, workdir: pathlib.Path) -> None:
    """flatness.png (λ_max per task, a line per scenario/regime and analysed run) and bound.png
    (measured vs estimate vs bound; bound_<label>.png for each when there are several)."""
    found = list(_analysed(results))
    if not found:
        return
    from cljax.analysis import plot_bound, plot_flatness

    lines = {f"{label} (run {run['run']})": run["flatness"]
             for label, sc in found for run in sc["analysis"]["runs"]}
    plot_flatness(lines, workdir / "flatness.png", title="λ_max of each task's loss at θ*_t")
    for label, sc in found:
        run = sc["analysis"]["runs"][0]
        name = "bound.png" if len(found) == 1 else f"bound_{label.replace(' ', '_')}.png"
        plot_bound(run["bound"], workdir / name, title=f"{label}, run {run['run']}")


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


__all__ = ["markdown_report", "plot_accuracy_matrices", "plot_task_curves",
           "plot_stability_plasticity", "write_analysis_plots", "write_outputs"]
