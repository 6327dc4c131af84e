"""Write an experiment's outputs: ``results.json``, ``report.md`` and the plots."""
from __future__ import annotations

import io
import math
import os
import pathlib
from typing import TYPE_CHECKING, TypeGuard

import numpy as np
import numpy.typing as npt

from cljax.workdir import write_bytes_atomic, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRIC_NAMES = {"acc": "ACC", "bwt": "BWT", "fwt": "FWT", "forgetting": "Forgetting (max)",
                "forgetting_from_first": "Forgetting (first)", "plasticity": "Plasticity"}


def _finite(x: object) -> TypeGuard[int | float | np.number]:
    return isinstance(x, (int, float, np.number)) and math.isfinite(x)


def _f(x, spec: str = ".4g") -> str:
    """``x`` formatted, or "–" for a missing / non-finite value (``null`` in results.json)."""
    return format(x, spec) if _finite(x) else "–"


def _pct(entry: dict) -> str:
    mean, sem = entry.get("mean"), entry.get("sem")
    if not _finite(mean):
        return "–"
    return f"{100 * mean:.2f} ± {_f(100 * sem if _finite(sem) else None, '.2f')}"


def _floats(values) -> np.ndarray:
    """A nested list / array as floats, ``None`` (JSON's null) as NaN."""
    return np.asarray(values, dtype=float)


def _mean_over_runs(values) -> np.ndarray:
    """Mean over the leading (runs) axis ignoring NaN (diverged runs); NaN where every run is."""
    a = _floats(values)
    ok = ~np.isnan(a)
    count = ok.sum(0)
    return np.where(count > 0, np.where(ok, a, 0).sum(0) / np.maximum(count, 1), np.nan)


def _analysis_section(name: str, analysis: dict) -> list[str]:
    lines = ["", f"## {name}-IL: flatness and the forgetting bound ({analysis['curvature']} of "
             f"each task's mean test loss at θ*_t; seed 000 eq. 19–20)"]
    for run in analysis["runs"]:
        flat, bound = run["flatness"], run["bound"]
        T = len(flat["lambda_max"])
        s = bound["summary"]
        final = list(s["final_forgetting"]) + [None]
        lines += ["", f"Run {run['run']} ({run['seconds']:.1f} s):", "",
                  "| task | λ_max(H_t) | ‖∇ℓ_t(θ*_t)‖ | HVPs | ℓ_t(θ*_t) | forgetting ℓ_t(θ*_T) − ℓ_t(θ*_t) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| T{t + 1} | {_f(flat['lambda_max'][t])} | {_f(flat['grad_norm'][t], '.3g')} "
                  f"| {flat['num_matvecs'][t]} | {_f(flat['loss'][t])} | {_f(final[t])} |"
                  for t in range(T)]
        lines += ["", "| pair (i, j) | measured ℓ_i(θ*_j) − ℓ_i(θ*_i) | ½ΔθᵀH_iΔθ | "
                  "½λ_max‖Δθ‖² | measured ≤ bound |", "|---|---|---|---|---|"]
        for i, j, m, q, b in zip(bound["pair_i"], bound["pair_j"], bound["measured"],
                                 bound["quadratic"], bound["bound"]):
            holds = ("yes" if m <= b else "no") if _finite(m) and _finite(b) else "–"
            lines.append(f"| ({i + 1}, {j + 1}) | {_f(m)} | {_f(q)} | {_f(b)} | {holds} |")
        frac = s["frac_measured_le_bound"]
        lines += ["", f"The bound holds for {_f(100 * frac if _finite(frac) else None, '.0f')} % "
                  f"of {s['num_pairs']} pairs; median measured/bound "
                  f"{_f(s['median_ratio_measured_to_bound'], '.3g')}, measured/quadratic "
                  f"{_f(s['median_ratio_measured_to_quadratic'], '.3g')}; Spearman(λ_max, final "
                  f"forgetting) = {_f(s['spearman_lambda_max_forgetting'], '.3g')}."]
        paths = run.get("connectivity")
        if paths:
            lines += ["", "Task t's loss on the linear path from θ*_t to θ*_T (Mirzadeh et al. "
                      "2021's connectivity; barrier: the path's highest rise above the line "
                      "between its ends):", "", "| task | ℓ_t(θ*_t) | max on the path | "
                      "ℓ_t(θ*_T) | barrier |", "|---|---|---|---|---|"]
            lines += [f"| T{t + 1} | {_f(row[0])} | {_f(max(v for v in row if _finite(v)))} "
                      f"| {_f(row[-1])} | {_f(paths['barrier'][t])} |"
                      for t, row in enumerate(paths["loss"])]
        sharp = run.get("path_sharpness")
        if sharp:
            lines += ["", "λ_max of task t's loss on the same path (sharpness_paths), and the "
                      "bound ½·λ_max(θ*_t)·‖θ*_T − θ*_t‖² against the measured ℓ_t(θ*_T) − "
                      "ℓ_t(θ*_t):", "",
                      "| task | " + " | ".join(f"λ_max at t = {_f(t, '.2g')}" for t in sharp["t"])
                      + " | bound | measured |", "|---|" + "---|" * (len(sharp["t"]) + 2)]
            for t, row in enumerate(sharp["lambda_max"]):
                bound = (0.5 * row[0] * sharp["delta_sq_norm"][t]
                         if _finite(row[0]) and _finite(sharp["delta_sq_norm"][t]) else None)
                measured = (paths["loss"][t][-1] - paths["loss"][t][0] if paths and
                            _finite(paths["loss"][t][-1]) and _finite(paths["loss"][t][0])
                            else None)
                lines.append(f"| T{t + 1} | " + " | ".join(_f(v) for v in row)
                             + f" | {_f(bound)} | {_f(measured)} |")
        versus = run.get("multitask_connectivity")
        if versus:
            lines += ["", "From θ*_t, the loss of tasks 1 … t on the linear path to the next "
                      "continual solution θ*_t+1 and to a multitask solution trained on tasks "
                      "1 … t+1 from θ*_t (Mirzadeh et al. 2021, MC-SGD's Sec. 3):", "",
                      "| from | loss at θ*_t | rise to θ*_t+1 | rise to multitask | barrier to "
                      "θ*_t+1 | barrier to multitask | loss at θ*_t+1 | loss at multitask |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [f"| θ*_{t + 1} | {_f(c[0])} | {_f(versus['rise_continual'][t])} | "
                      f"{_f(versus['rise_multitask'][t])} | "
                      f"{_f(versus['barrier_continual'][t])} | "
                      f"{_f(versus['barrier_multitask'][t])} | {_f(c[-1])} | {_f(m[-1])} |"
                      for t, (c, m) in enumerate(zip(versus["continual"], versus["multitask"]))]
    return lines


def _diverged(gone: list, seeds: int) -> str:
    """``"k/S (seed s: task t, step n; ...)"``, or ``"0"``."""
    if not gone:
        return "0"
    where = "; ".join(f"seed {g['seed']}: task {g['task'] + 1}, step {g['step']}" for g in gone)
    return f"{len(gone)}/{seeds} ({where})"


def _regime_label(record: dict) -> str:
    """``stable_sgd (decay=0.5)`` for the record ``{"name": "stable_sgd", "decay": 0.5}``."""
    options = ", ".join(f"{k}={v}" for k, v in record.items() if k != "name")
    return f"`{record['name']}`" + (f" ({options})" if options else "")


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
             f"model {cfg['model']}, optimizer {cfg['optimizer']}, hparams {cfg['hparams']}"
             + (f", under the training regime {_regime_label(cfg['regime'])}"
                if cfg.get("regime") else "") + ".", "",
             "Accuracy metrics in % (mean ± SEM over seeds)" + (
                 f", on a validation split ({cfg['validation_fraction']:g} of every class carved "
                 "from the training split; the test split was not read)"
                 if cfg.get("evaluate_on") == "validation" else "") + ":", "",
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
                      "diverged (training loss non-finite or far above its initial value); the "
                      "metrics above are over the others.**"]
    for name, sc in results["scenarios"].items():
        R = 100 * _mean_over_runs(sc["accuracy"])
        T = R.shape[0]
        best = f" at {sc['best_hparams']}" if "sweep" in sc else ""
        lines += ["", f"## {name}-IL: accuracy matrix{best} (row = after task i, column = task j, %)", "",
                  "| after \\ on | " + " | ".join(f"T{j + 1}" for j in range(T)) + " |",
                  "|---" * (T + 1) + "|"]
        lines += [f"| T{i + 1} | " + " | ".join(_f(R[i, j], ".2f") for j in range(T)) + " |"
                  for i in range(T)]
        if "analysis" in sc:
            lines += _analysis_section(name, sc["analysis"])
        t = sc["timings"]
        lines += ["", f"Compile {_f(t['compile_seconds'], '.1f')} s; training + evaluation "
                  f"{_f(t['run_seconds'], '.1f')} s for {cfg['seeds']} vmapped seed(s)."]
    return "\n".join(lines) + "\n"


def plot_accuracy_matrices(results: dict, path: str | os.PathLike) -> None:
    """accuracy_matrix.png: :func:`accuracy_matrix_figure` saved atomically."""
    _save(accuracy_matrix_figure(results), path)


def accuracy_matrix_figure(results: dict) -> Figure:
    """Heatmaps of the mean accuracy matrix (over the runs that did not diverge), one panel per
    scenario, with a shared colour bar; a matplotlib Figure (Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scs = results["scenarios"]
    # constrained layout: room for each panel's y-label and the shared colour bar (without it
    # every y-label but the first runs into the panel on its left)
    fig, axes = plt.subplots(1, len(scs), figsize=(4.2 * len(scs) + 0.8, 3.8), squeeze=False,
                             layout="constrained")
    for ax, (name, sc) in zip(axes[0], scs.items()):
        R = 100 * _mean_over_runs(sc["accuracy"])
        T = R.shape[0]
        im = ax.imshow(R, vmin=0, vmax=100, cmap="viridis")
        for i in range(T):
            for j in range(T):
                ax.text(j, i, _f(R[i, j], ".0f"), ha="center", va="center", fontsize=7,
                        color="white" if R[i, j] < 60 else "black")  # NaN: black on blank
        ax.set_xticks(range(T), [f"T{j + 1}" for j in range(T)])
        ax.set_yticks(range(T), [f"T{i + 1}" for i in range(T)])
        ax.set_xlabel("evaluated on task")
        ax.set_ylabel("after training task")
        ax.set_title(f"{name}-IL")
    fig.colorbar(im, ax=axes[0].tolist(), label="test accuracy (%)")
    return fig


def plot_samples(pixels: npt.ArrayLike, path: str | os.PathLike, *, title: str = "") -> None:
    """samples_<scenario>.png: a grid of generated examples, a row per task (``pixels``:
    ``uint8`` values ``[T][n][H][W]`` or ``[T][n][H][W][C]``, as in samples_<scenario>.npy)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(pixels, np.uint8)
    if x.ndim not in (4, 5) or (x.ndim == 5 and x.shape[-1] not in (1, 3)):
        raise ValueError(f"pixels must be [T][n][H][W] or [T][n][H][W][1|3]; got shape "
                         f"{x.shape}")
    if x.ndim == 5 and x.shape[-1] == 1:
        x = x[..., 0]
    T, n = x.shape[:2]
    fig, axes = plt.subplots(T, n, figsize=(0.8 * n + 0.8, 0.8 * T + 0.5), squeeze=False)
    for t in range(T):
        for j in range(n):
            ax = axes[t][j]
            ax.imshow(x[t, j], cmap="gray" if x.ndim == 4 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[t][0].set_ylabel(f"after T{t + 1}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_task_curves(results: dict, path: str | os.PathLike) -> None:
    """task_curves.png: the test accuracy of every task after each training task (mean ± SEM
    over the runs that did not diverge), one panel per scenario; saved atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scs = results["scenarios"]
    fig, axes = plt.subplots(1, len(scs), figsize=(4.5 * len(scs), 3.6), squeeze=False)
    for ax, (name, sc) in zip(axes[0], scs.items()):
        acc = 100 * _floats(sc["accuracy"])
        T = acc.shape[-1]
        acc = acc[~np.isnan(acc).any(axis=(1, 2))]  # diverged runs are NaN
        ax.set_title(f"{name}-IL")
        if acc.shape[0] == 0:
            ax.text(0.5, 0.5, "every run diverged", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        mean = acc.mean(0)
        sem = acc.std(0, ddof=1) / np.sqrt(acc.shape[0]) if acc.shape[0] > 1 else 0 * mean
        x = np.arange(1, T + 1)
        for j in range(T):
            ax.errorbar(x[j:], mean[j:, j], yerr=sem[j:, j], marker="o", ms=3, capsize=2,
                        label=f"task {j + 1}")
        ax.set_xticks(x)
        ax.set_xlabel("after training task")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    _save(fig, path)


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
            if not all(key in p["metrics"] for p in pts):
                continue  # BWT needs 2 tasks
            mean = 100 * _floats([p["metrics"][key]["mean"] for p in pts])
            sem = 100 * _floats([p["metrics"][key]["sem"] for p in pts])
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
    _save(fig, path)


def _save(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save ``fig`` as a PNG atomically (rendered in memory, then temp file + rename)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def write_outputs(results: dict, workdir: str | os.PathLike) -> pathlib.Path:
    """Write results.json, report.md, accuracy_matrix.png and task_curves.png into ``workdir``
    (and stability_plasticity.png after a sweep, flatness.png / bound.png after an analysis,
    samples_<scenario>.png for a generative method;
    with regimes, one sub-directory per regime). Every file is written atomically (temp file in
    ``workdir`` + ``os.replace``), so calling this again after each finished scenario (the
    CLI's ``on_scenario``) replaces the outputs whole: a reader, or a run killed mid-write,
    sees the previous version or the new one, never a torn file.

    ``results.json`` is strict JSON (RFC 8259; Python's ``json.loads`` and every other parser
    read it). Schema, in short::

        config         the validated config (every default filled in)
        versions       python, platform, jax, jaxlib, flax, optax, numpy, tfds, devices
        stream         name, num_tasks, classes, train_sizes, test_sizes, evaluated_on
                       ("test", or "validation": test_sizes are then the validation sizes)
        load_seconds, total_seconds, (pretrain, encode_seconds with config.features)
        scenarios.<task|domain|class>:
          num_heads, num_outputs, hparams (of the reported point)
          accuracy [S][T][T], loss [S][T][T]   row i = after task i, column j = task j; S seeds
          init_accuracy [S][T], init_loss [S][T], final_train_loss [S][T]
          metrics / loss_metrics   {acc, bwt, fwt, forgetting, ...: {mean, sem, per_run}}
                                   over the runs that did not diverge
          diverged [{seed, task, step}], timings {compile_seconds, run_seconds, ...}
          best_hparams, sweep [{hparams, accuracy, ..., metrics, diverged}]   after a sweep
          samples {run, file, shape}   a generative method's samples after each task (one
                                   run): uint8 pixels [T, n, H, W(, C)] in samples_<name>.npy,
                                   drawn in samples_<name>.png
          analysis {curvature, data, runs [{run, flatness, bound, seconds}]}   --analysis
        regimes.<name>: the same, per regime (instead of stream / scenarios)

    A missing or non-finite value is ``null``: a diverged run's accuracies and losses, a metric
    with no finite run, an infinite loss; there are never bare ``NaN`` / ``Infinity`` tokens.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shown, samples = _without_pixels(results)
    write_json_atomic(workdir / "results.json", shown)
    write_text_atomic(workdir / "report.md", markdown_report(results))
    if "regimes" in results:
        for regime, sub in results["regimes"].items():
            write_outputs(sub, workdir / regime)
        write_analysis_plots(results, workdir)
        return workdir
    write_analysis_plots(results, workdir)
    plot_accuracy_matrices(results, workdir / "accuracy_matrix.png")
    for name, pixels in samples.items():
        write_bytes_atomic(workdir / f"samples_{name}.npy", _npy_bytes(pixels))
        plot_samples(pixels, workdir / f"samples_{name}.png",
                     title=f"{name}-IL: generated after each task (run "
                           f"{results['scenarios'][name]['samples']['run']})")
    plot_task_curves(results, workdir / "task_curves.png")
    if results["config"].get("sweep"):
        plot_stability_plasticity(results, workdir / "stability_plasticity.png")
    return workdir


def _without_pixels(results: dict) -> tuple[dict, dict]:
    """``results`` with each scenario's ``samples.pixels`` replaced by the name of the ``.npy``
    file that holds them, and ``{scenario: pixels}`` (``uint8`` arrays)."""
    if "regimes" in results:      # each regime's pixels go to its own sub-directory
        return {**results, "regimes": {k: _without_pixels(sub)[0]
                                       for k, sub in results["regimes"].items()}}, {}
    if "scenarios" not in results:
        return results, {}
    shown, pixels = dict(results), {}
    shown["scenarios"] = dict(results["scenarios"])
    for name, sc in results["scenarios"].items():
        if isinstance(sc.get("samples"), dict) and "pixels" in sc["samples"]:
            pixels[name] = np.asarray(sc["samples"]["pixels"], np.uint8)
            rest = {k: v for k, v in sc["samples"].items() if k != "pixels"}
            shown["scenarios"][name] = {**sc, "samples": {
                **rest, "file": f"samples_{name}.npy", "shape": list(pixels[name].shape)}}
    return shown, pixels


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


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
    """flatness.png (λ_max per task, a line per scenario/regime and analysed run), bound.png
    (measured vs estimate vs bound), connectivity.png (each task's loss along the path from
    θ*_t to θ*_T), sharpness_paths.png (with ``analysis_options.path_sharpness``) and
    multitask_connectivity.png (with ``analysis_options.multitask``); ``_<label>`` in the names
    when several scenarios or regimes are analysed."""
    found = list(_analysed(results))
    if not found:
        return
    from cljax.analysis import (
        plot_bound,
        plot_flatness,
        plot_multitask_paths,
        plot_paths,
        plot_sharpness_paths,
    )

    lines = {f"{label} (run {run['run']})": run["flatness"]
             for label, sc in found for run in sc["analysis"]["runs"]}
    plot_flatness(lines, workdir / "flatness.png", title="λ_max of each task's loss at θ*_t")
    for label, sc in found:
        run = sc["analysis"]["runs"][0]
        suffix = "" if len(found) == 1 else f"_{label.replace(' ', '_')}"
        plot_bound(run["bound"], workdir / f"bound{suffix}.png",
                   title=f"{label}, run {run['run']}")
        if run.get("connectivity"):
            plot_paths(run["connectivity"], workdir / f"connectivity{suffix}.png",
                       title=f"{label}, run {run['run']}: task t's loss from θ*_t to θ*_T")
        if run.get("connectivity") and run.get("path_sharpness"):
            plot_sharpness_paths(run["connectivity"], run["path_sharpness"],
                                 workdir / f"sharpness_paths{suffix}.png",
                                 title=f"{label}, run {run['run']}: flatness, connectivity and "
                                       "forgetting along θ*_t → θ*_T")
        if run.get("multitask_connectivity"):
            plot_multitask_paths(run["multitask_connectivity"],
                                 workdir / f"multitask_connectivity{suffix}.png",
                                 title=f"{label}, run {run['run']}: continual vs multitask "
                                       "connectivity")


__all__ = ["markdown_report", "accuracy_matrix_figure", "plot_accuracy_matrices", "plot_samples",
           "plot_task_curves",
           "plot_stability_plasticity", "write_analysis_plots", "write_outputs"]
