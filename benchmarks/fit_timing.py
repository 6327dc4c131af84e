"""Interleaved timing of jitted ``Trainer.fit`` calls, shared by the step-cost benchmarks.

``compiled_fits(cases, model, data, batch_size)`` builds, for each ``{case: (method name,
options)}``, a trainer with Adam and its jitted ``fit`` (compiled once, outside the timing);
``median_step_seconds(fits, data, task, steps, rounds)`` times them in ``rounds`` interleaved
rounds (every case once a round, so a slow spell of the machine touches them all) and returns
each case's median seconds per step.
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import optax

from cljax.methods import get_method
from cljax.training import make_trainer


def compiled_fits(cases: dict, model, data, batch_size: int, *, task: int, steps: int,
                  learning_rate: float = 1e-3) -> dict:
    """``{case: (jitted fit, initial state)}``, each compiled by one call on ``task``."""
    fits = {}
    for case, (method_name, options) in cases.items():
        method = get_method(method_name, **options)
        tr = make_trainer(model, method, optimizer=optax.adam(learning_rate),
                          batch_size=batch_size)
        state = tr.init(jax.random.key(0), dict(method.default_hparams), data)
        fit = jax.jit(tr.fit, static_argnums=3)
        jax.block_until_ready(fit(state, data, jnp.asarray(task), steps))
        fits[case] = (fit, state)
    return fits


def median_step_seconds(fits: dict, data, *, task: int, steps: int, rounds: int) -> dict:
    """Each case's median over ``rounds`` interleaved rounds of seconds per step."""
    times = {case: [] for case in fits}
    for _ in range(rounds):
        for case, (fit, state) in fits.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fit(state, data, jnp.asarray(task), steps))
            times[case].append((time.perf_counter() - t0) / steps)
    return {case: statistics.median(t) for case, t in times.items()}
