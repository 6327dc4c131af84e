"""Tests for cljax.data.augment (random crops and flips) and the trainer's ``augment`` knob."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.data import make_scenario, split_tasks
from cljax.data.augment import augment_images, random_crop_flip
from cljax.methods import Method, current_task_batch, task_loss
from cljax.nn import CNN, as_model
from cljax.training import make_trainer, prepare_data, run_stream


def _candidates(image, pad, mode):
    """Every crop of ``image`` padded by ``pad``, unflipped and flipped (the brute-force oracle)."""
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
    h, w = image.shape[:2]
    crops = [padded[y:y + h, x:x + w] for y in range(2 * pad + 1) for x in range(2 * pad + 1)]
    return crops + [c[:, ::-1] for c in crops]


@pytest.mark.parametrize("mode", ["constant", "symmetric"])
def test_every_output_is_a_crop_of_the_padded_image_or_its_mirror(mode):
    images = np.asarray(jax.random.uniform(jax.random.key(0), (64, 6, 5, 2)))
    out = np.asarray(random_crop_flip(jnp.asarray(images), jax.random.key(1), pad=2, mode=mode))
    assert out.shape == images.shape
    found = []
    for image, o in zip(images, out):
        matches = [i for i, c in enumerate(_candidates(image, 2, mode)) if np.array_equal(c, o)]
        assert matches, "an output is no crop of its padded image"
        found.append(matches[0])
    flipped = np.mean([m >= 25 for m in found])
    assert 0.25 < flipped < 0.75                              # about half are flipped
    assert len({m % 25 for m in found}) > 10                  # many offsets are drawn
    again = random_crop_flip(jnp.asarray(images), jax.random.key(1), pad=2, mode=mode)
    np.testing.assert_array_equal(again, out)                 # the key decides it all
    jitted = jax.jit(lambda x, k: random_crop_flip(x, k, pad=2, mode=mode))(images,
                                                                             jax.random.key(1))
    np.testing.assert_array_equal(jitted, out)
    np.testing.assert_array_equal(random_crop_flip(jnp.asarray(images), jax.random.key(2),
                                                   pad=0, mode=mode)[:, :, ::-1].shape,
                                  images.shape)


def test_augment_images_and_bad_inputs():
    x = jnp.ones((2, 4, 4, 1))
    assert augment_images(x, jax.random.key(0), "none") is x
    with pytest.raises(ValueError, match="augment must be one of"):
        augment_images(x, jax.random.key(0), "mixup")
    with pytest.raises(ValueError, match=r"augment='crop_flip' needs image batches"):
        augment_images(jnp.ones((2, 16)), jax.random.key(0), "crop_flip")
    with pytest.raises(ValueError, match=r"images must be \[B, H, W, C\]"):
        random_crop_flip(jnp.ones((2, 16)), jax.random.key(0))
    with pytest.raises(ValueError, match="pad must be an int >= 0"):
        random_crop_flip(x, jax.random.key(0), pad=-1)
    with pytest.raises(ValueError, match="mode must be one of"):
        random_crop_flip(x, jax.random.key(0), mode="reflect")


def _batch_recorder(steps):
    """A fine-tuning method whose state keeps, per step, the rows it drew and the batch images
    its loss saw."""
    def init(params, key, hparams, spec):
        del params, key, hparams, spec
        return {"drawn": jnp.zeros((steps, 4, 6, 6, 1)), "seen": jnp.zeros((steps, 4, 6, 6, 1))}

    def batch(ctx, log):
        return current_task_batch(ctx, log)

    def after_step(info):
        log = {"drawn": info.mstate["drawn"].at[info.clock.step].set(
                   info.rows["x"].astype(jnp.float32)),
               "seen": info.mstate["seen"].at[info.clock.step].set(info.batch["x"])}
        return info.keep_params(log)

    return Method("recorder", init=init, batch=batch, loss=task_loss, after_step=after_step)


def test_the_trainer_augments_the_training_batch_only():
    stream = split_tasks(tiny_dataset(n=40, num_classes=4), tiny_dataset(n=20, seed=1),
                         tasks=[[0, 1], [2, 3]])
    scenario = make_scenario(stream, "task")
    data = prepare_data(stream, scenario, eval_chunk=10)
    model = as_model(CNN(scenario.num_outputs, num_heads=scenario.num_heads, channels=(3,),
                         hidden=8))

    def trainer(augment="none"):
        return make_trainer(model, _batch_recorder(6), optimizer=optax.sgd(0.1), batch_size=4,
                            eval_chunk=10, augment=augment)

    keys = jax.random.split(jax.random.key(0), 1)
    plain = run_stream(trainer(), data, num_steps=3, keys=keys)
    augmented = run_stream(trainer("crop_flip"), data, num_steps=3, keys=keys)
    log = jax.tree.map(lambda a: np.asarray(a[0]), augmented.final_state.mstate)
    plain_log = jax.tree.map(lambda a: np.asarray(a[0]), plain.final_state.mstate)
    np.testing.assert_array_equal(log["drawn"], plain_log["drawn"])   # the same rows drawn
    mean, std = np.asarray(data.mean), np.asarray(data.std)
    normalised = (log["drawn"] / 255.0 - mean) / std
    np.testing.assert_allclose(plain_log["seen"], normalised, rtol=1e-5, atol=1e-6)
    assert not np.allclose(log["seen"], normalised)                   # the loss saw others
    for image, seen in zip(normalised.reshape(-1, 6, 6, 1), log["seen"].reshape(-1, 6, 6, 1)):
        assert any(np.allclose(c, seen, atol=1e-5) for c in _candidates(image, 4, "constant"))
    # evaluation reads the test images as they are
    state = jax.tree.map(lambda a: a[0], augmented.final_state)
    np.testing.assert_array_equal(trainer("crop_flip").evaluate(state, data)[0],
                                  trainer().evaluate(state, data)[0])
    with pytest.raises(ValueError, match="augment must be one of"):
        trainer("flip")
