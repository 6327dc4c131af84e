"""pmap over 2 forced host CPU devices, one shard of the data per device (chex ``with_pmap``).

Not collected by pytest (no ``test_`` prefix): ``test_properties.py::
test_pmap_over_two_forced_host_devices`` runs it as a script in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` set before JAX starts (the device count is
fixed when the backend initialises). Run by hand the same way::

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/properties_multidevice.py

Data parallelism: each device gets its own examples (or gradient), ``lax.pmean`` over the device
axis combines them, and the result equals the single-device computation on all the data — the
empirical Fisher is a mean over examples, so the mean of equal-sized shards' Fishers is the
Fisher of the whole batch.
"""
from __future__ import annotations

import chex
import importance_helpers as IH
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from cljax import importance as imp
from cljax import transforms as tr

N_DEVICES = 2


class TwoDevicePmapTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        self.assertEqual(jax.device_count(), N_DEVICES,
                         "run with XLA_FLAGS=--xla_force_host_platform_device_count=2")

    @chex.variants(with_pmap=True)
    def test_empirical_fisher_of_shards_pmean_equals_the_whole_batch(self):
        with jax.enable_x64(True):
            model, params, batch = IH.mlp_problem(n=8, d=4, widths=(3,), classes=3, heads=2,
                                                  seed=1)
            shards = jax.tree.map(lambda v: v.reshape((N_DEVICES, -1) + v.shape[1:]), batch)

            def per_device(p, b):
                f = imp.empirical_fisher_diagonal(model.logits_fn, p, b, chunk_size=3)
                return f, jax.lax.pmean(f, axis_name="i")

            local, pooled = self.variant(per_device, broadcast_args_to_devices=False,
                                         reduce_fn="identity", n_devices=N_DEVICES,
                                         in_axes=(None, 0))(params, shards)
            whole = imp.empirical_fisher_diagonal(model.logits_fn, params, batch,
                                                  implementation="vmap")
            for d in range(N_DEVICES):
                shard = jax.tree.map(lambda v: v[d], shards)
                want = imp.empirical_fisher_diagonal(model.logits_fn, params, shard,
                                                     implementation="vmap")
                chex.assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x[d]), local),
                                            jax.tree.map(np.asarray, want), rtol=1e-9,
                                            atol=1e-13)
                chex.assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x[d]), pooled),
                                            jax.tree.map(np.asarray, whole), rtol=1e-9,
                                            atol=1e-13)

    @chex.variants(with_pmap=True)
    def test_quadratic_penalty_on_pmean_gradient(self):
        rng = np.random.default_rng(0)
        tree = lambda: {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                        "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
        params, anchor = tree(), tree()
        omega = jax.tree.map(jnp.abs, tree())
        grads = jax.tree.map(lambda a, b: jnp.stack([a, b]), tree(), tree())   # one per device
        state = tr.consolidate(tr.init_penalty(params), anchor, omega, mode="multi_task")
        tx = tr.quadratic_penalty(strength=0.5)

        def step(g, p, s):
            g = jax.lax.pmean(g, axis_name="i")
            return tx.update(g, tx.init(p), p, penalty_state=s)[0]

        out = self.variant(step, broadcast_args_to_devices=False, reduce_fn="identity",
                           n_devices=N_DEVICES, in_axes=(0, None, None))(grads, params, state)
        mean_g = jax.tree.map(lambda g: g.mean(0), grads)
        want = jax.tree.map(lambda g, p, a, o: g + 0.5 * o * (p - a), mean_g, params, anchor,
                            omega)
        for d in range(N_DEVICES):
            chex.assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x[d]), out),
                                        jax.tree.map(np.asarray, want), rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    absltest.main()
