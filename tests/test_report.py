"""cljax.report: strict-JSON results written atomically, reports from results read back, plots
whose labels do not collide."""
import itertools
import json
import math

import numpy as np
import pytest

from cljax import metrics, report
from cljax.analysis import plots


def _strict_loads(text: str):
    """json.loads that refuses the non-standard NaN / Infinity tokens."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def _summary(R: np.ndarray) -> dict:
    ok = R[~np.isnan(R).any(axis=(1, 2))]
    if ok.shape[0] == 0:
        return {k: {"mean": float("nan"), "sem": float("nan"), "per_run": []}
                for k in ("acc", "bwt", "plasticity", "forgetting", "forgetting_from_first")}
    out = {}
    for name, per_run in metrics.all_metrics(ok, kind="accuracy").items():
        mean, sem = metrics.mean_and_sem(per_run)
        out[name] = {"mean": mean, "sem": sem, "per_run": per_run.tolist()}
    return out


def synthetic_results(scenarios=("task", "class"), *, seeds: int = 2, tasks: int = 3,
                      diverged: dict | None = None, sweep: bool = False) -> dict:
    """A results dict shaped like run_experiment's; ``diverged[name]`` = seeds whose run
    diverged (NaN accuracies, an infinite loss), as in a real run."""
    rng = np.random.default_rng(0)
    diverged = diverged or {}
    config = {"method": "ewc", "seeds": seeds, "steps": 10, "batch_size": 8,
              "model": {"kind": "mlp", "widths": [8]}, "optimizer": {"name": "adam"},
              "hparams": {}, "sweep": {"strength": [1.0, 10.0]} if sweep else {}}
    out = {"config": config, "versions": {"jax": "x"},
           "stream": {"name": "split mnist", "num_tasks": tasks}, "scenarios": {}}
    for name in scenarios:
        points = []
        for strength in ([1.0, 10.0] if sweep else [None]):
            R = rng.uniform(0.2, 1.0, (seeds, tasks, tasks))
            loss = rng.uniform(0.1, 3.0, (seeds, tasks, tasks))
            gone = diverged.get(name, [])
            for s in gone:
                R[s], loss[s] = np.nan, np.inf
            points.append({
                "hparams": {"strength": strength} if sweep else {},
                "accuracy": R, "loss": loss, "init_accuracy": np.full((seeds, tasks), 0.1),
                "final_train_loss": np.where(np.isin(np.arange(seeds), gone)[:, None], np.nan,
                                             0.5 * np.ones((seeds, tasks))),
                "metrics": _summary(R),
                "diverged": [{"seed": s, "task": 0, "step": 3} for s in gone]})
        entry = {"num_heads": 1, "num_outputs": 2, **points[-1],
                 "timings": {"compile_seconds": 1.0, "run_seconds": 2.0}}
        if sweep:
            entry.update(best_hparams=points[-1]["hparams"], sweep=points)
        out["scenarios"][name] = entry
    return out


def _analysis(tasks: int = 3) -> dict:
    pairs = [(i, j) for j in range(tasks) for i in range(j)]
    measured = [-2e-3, 0.05, float("nan")][:len(pairs)]
    return {"curvature": "hessian", "data": "test set of each task", "runs": [{
        "run": 0, "seconds": 1.5,
        "flatness": {"lambda_max": [3.0, 5.0, float("inf")], "grad_norm": [0.1, 0.2, 0.3],
                     "num_matvecs": [10, 10, 10], "loss": [0.1, 0.2, 0.3]},
        "bound": {"pair_i": [p[0] for p in pairs], "pair_j": [p[1] for p in pairs],
                  "measured": measured, "quadratic": [1e-3, 0.04, 0.2],
                  "bound": [0.01, 0.5, 2.0],
                  "summary": {"final_forgetting": [0.1, float("nan")],
                              "frac_measured_le_bound": 1.0, "num_pairs": len(pairs),
                              "median_ratio_measured_to_bound": 0.1,
                              "median_ratio_measured_to_quadratic": float("nan"),
                              "spearman_lambda_max_forgetting": 0.5}},
        "connectivity": {"t": [0.0, 0.5, 1.0], "loss": [[0.1, 0.9, 0.4], [0.2, 0.3, 0.5]],
                         "barrier": [0.65, 0.0], "forgetting": [0.3, 0.3]}}]}


def test_results_json_is_strict_and_null_for_non_finite(tmp_path):
    results = synthetic_results(diverged={"class": [1]})
    results["scenarios"]["task"]["analysis"] = _analysis()
    report.write_outputs(results, tmp_path)
    text = (tmp_path / "results.json").read_text()
    loaded = _strict_loads(text)  # would fail on bare NaN / Infinity
    assert "NaN" not in text and "Infinity" not in text
    acc = loaded["scenarios"]["class"]["accuracy"]
    assert acc[1][0][0] is None and acc[0][0][0] == pytest.approx(
        results["scenarios"]["class"]["accuracy"][0, 0, 0])
    assert loaded["scenarios"]["class"]["loss"][1][2][2] is None  # inf → null
    # the report and plots work from results read back (nulls), as from the in-memory dict
    assert report.markdown_report(loaded) == report.markdown_report(results)
    report.write_outputs(loaded, tmp_path / "again")
    assert _strict_loads((tmp_path / "again" / "results.json").read_text()) == loaded
    assert (tmp_path / "bound.png").stat().st_size > 0
    assert (tmp_path / "flatness.png").stat().st_size > 0
    assert (tmp_path / "connectivity.png").stat().st_size > 0
    md = report.markdown_report(results)
    assert "| T1 | 0.1 | 0.9 | 0.4 | 0.65 |" in md and "| T2 | 0.2 | 0.5 | 0.5 | 0 |" in md


def test_repeated_writes_replace_whole_files_and_leave_no_temp_files(tmp_path):
    first = synthetic_results(("task",))
    report.write_outputs(first, tmp_path)
    assert set(_strict_loads((tmp_path / "results.json").read_text())["scenarios"]) == {"task"}
    both = synthetic_results(("task", "class"), sweep=True)
    out = report.write_outputs(both, tmp_path)
    assert out == tmp_path
    assert set(_strict_loads((tmp_path / "results.json").read_text())["scenarios"]) == {
        "task", "class"}
    assert "| class-IL |" in (tmp_path / "report.md").read_text()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["accuracy_matrix.png", "report.md", "results.json",
                     "stability_plasticity.png", "task_curves.png"], names  # no *.tmp left
    for name in names:
        assert (tmp_path / name).stat().st_size > 0


def test_every_run_diverged_still_reports(tmp_path):
    results = synthetic_results(("task",), diverged={"task": [0, 1]})
    report.write_outputs(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "2/2 (seed 0: task 1, step 3; seed 1: task 1, step 3)" in md
    assert "| task-IL | – |" in md  # no "nan" in the tables
    assert "nan" not in md.lower().replace("mnist", "")


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_accuracy_matrix_y_labels_clear_the_panel_on_their_left():
    fig = report.accuracy_matrix_figure(synthetic_results(("task", "domain", "class"),
                                                          tasks=5))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_ylabel() == "after training task"]
    assert len(axes) == 3
    for left, right in itertools.pairwise(axes):
        label = right.yaxis.label.get_window_extent(renderer)
        ticks = [t.get_window_extent(renderer) for t in right.get_yticklabels()]
        for box in [label] + ticks:
            # nothing of a panel's y axis reaches into the panel on its left
            assert box.x0 >= left.get_window_extent(renderer).x1, (box, left)
            assert box.x0 >= left.get_tightbbox(renderer).x1 - 1
    import matplotlib.pyplot as plt
    plt.close(fig)


def _tick_label_boxes(axis, renderer):
    return [t.get_window_extent(renderer) for t in axis.get_ticklabels()
            if t.get_visible() and t.get_text()
            and axis.axes.get_window_extent(renderer).x0 - 50
            <= t.get_window_extent(renderer).x0 <= axis.axes.get_window_extent(renderer).x1 + 50
            and axis.axes.get_window_extent(renderer).y0 - 50
            <= t.get_window_extent(renderer).y0 <= axis.axes.get_window_extent(renderer).y1 + 50]


@pytest.mark.parametrize("scale", [1.0, 1e-2])
def test_bound_plot_symlog_ticks_do_not_pile_up_near_zero(scale):
    # negative forgetting near zero and positive values over five decades: the case where
    # −10⁻³, 0, 10⁻³ used to sit on top of each other
    measured = scale * np.array([-2.1e-3, 4e-4, 0.03, -8e-5, 0.12, 0.5, 1.3e-3, 0.02, 2.2, 0.9])
    quadratic = np.abs(measured) * 2 + 1e-5
    payload = {"measured": measured.tolist(), "quadratic": quadratic.tolist(),
               "bound": (quadratic * 10).tolist(), "summary": {"frac_measured_le_bound": 1.0}}
    fig = plots.bound_figure(payload)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog" and ax.get_yscale() == "log"
    lin = ax.xaxis.get_transform().linthresh
    assert math.log10(lin) == round(math.log10(lin))  # a power of ten, from the data
    boxes = _tick_label_boxes(ax.xaxis, renderer)
    assert 3 <= len(boxes) <= 7
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not _boxes_overlap(a.expanded(1.1, 1.0), b), (a, b)
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_symlog_ticks():
    t = plots.symlog_ticks([-3e-9, 1e-10, 5e-6, -2e-1, 3e2, 0.0, 4e-3, 1.0, 20.0])
    assert 0.0 in t["major"] and len(t["major"]) <= 7
    assert t["limits"][0] <= -0.2 and t["limits"][1] >= 300
    assert math.log10(t["linthresh"]) == round(math.log10(t["linthresh"]))
    assert not set(t["major"]) & set(t["minor"])
    assert plots.symlog_ticks([0.0, 0.0])["linthresh"] is None


@pytest.mark.parametrize("shape", [(3, 2, 5, 4), (3, 2, 5, 4, 1), (3, 2, 5, 4, 3)])
def test_generated_samples_go_to_npy_and_png_not_into_results_json(tmp_path, shape):
    results = synthetic_results(("class",), tasks=3)
    pixels = np.random.default_rng(0).integers(0, 256, size=shape).astype(np.uint8)
    results["scenarios"]["class"]["samples"] = {"run": 1, "pixels": pixels}
    out = report.write_outputs(results, tmp_path)
    saved = _strict_loads((out / "results.json").read_text())["scenarios"]["class"]["samples"]
    assert saved == {"run": 1, "file": "samples_class.npy", "shape": list(shape)}
    np.testing.assert_array_equal(np.load(out / "samples_class.npy"), pixels)
    assert (out / "samples_class.png").stat().st_size > 0
    assert "pixels" in results["scenarios"]["class"]["samples"]    # the caller's dict untouched
    # a finished scenario read back from its result.json holds nested lists: the same files
    results["scenarios"]["class"]["samples"]["pixels"] = pixels.tolist()
    report.write_outputs(results, tmp_path / "again")
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "samples_class.npy"), pixels)


def test_plot_samples_refuses_what_is_not_an_image_grid(tmp_path):
    with pytest.raises(ValueError, match=r"pixels must be \[T\]\[n\]\[H\]\[W\]"):
        report.plot_samples(np.zeros((3, 2, 1024), np.uint8), tmp_path / "x.png")
    with pytest.raises(ValueError, match="pixels must be"):
        report.plot_samples(np.zeros((3, 2, 4, 4, 2), np.uint8), tmp_path / "x.png")


def test_samples_of_regimes_go_to_each_regimes_directory(tmp_path):
    sub = synthetic_results(("class",), tasks=3)
    pixels = np.full((3, 2, 4, 4), 7, np.uint8)
    sub["scenarios"]["class"]["samples"] = {"run": 0, "pixels": pixels}
    results = {"config": sub["config"], "regimes": {"naive": sub}}
    out = report.write_outputs(results, tmp_path)
    top = _strict_loads((out / "results.json").read_text())
    assert top["regimes"]["naive"]["scenarios"]["class"]["samples"]["file"] == "samples_class.npy"
    np.testing.assert_array_equal(np.load(out / "naive" / "samples_class.npy"), pixels)
