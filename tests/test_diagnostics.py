"""Feature statistics against NumPy, per-sample (not Frobenius) L2, and the explosion checks."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtd3.agent.diagnostics import (
    FEATURE_STATS,
    check_explosion,
    feature_stats,
    nonfinite_leaves,
    per_sample_l2,
    tree_all_finite,
)

KNOWN = np.array([[3.0, 4.0, 0.0, -1.0], [0.0, 0.0, -2.0, 0.0], [1.0, 1.0, 1.0, 1.0]], np.float32)


class TestFeatureStats(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_on_known_array(self):
        stats = self.variant(lambda x: feature_stats(x, "p/"))(jnp.asarray(KNOWN))
        rows = np.sqrt((KNOWN**2).sum(axis=1))  # [sqrt(26), 2, 2]
        expected = {
            "p/l2_norm": rows.mean(),
            "p/l2_norm_max": rows.max(),
            "p/mean": KNOWN.mean(),
            "p/std": KNOWN.std(),
            "p/min": -2.0,
            "p/max": 4.0,
            "p/dead_fraction": 6 / 12,  # zeros and negatives
        }
        assert set(stats) == {"p/" + n for n in FEATURE_STATS}
        for name, value in expected.items():
            np.testing.assert_allclose(float(stats[name]), value, rtol=1e-6, err_msg=name)

    @chex.variants(with_jit=True, without_jit=True)
    def test_per_sample_l2_flattens_all_but_the_batch_axis(self):
        x = np.random.default_rng(0).standard_normal((3, 2, 5, 4)).astype(np.float32)
        got = self.variant(per_sample_l2)(jnp.asarray(x))
        chex.assert_shape(got, (3,))
        np.testing.assert_allclose(got, np.linalg.norm(x.reshape(3, -1), axis=1), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_l2_does_not_grow_with_batch_size(self):
        rows = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
        fn = self.variant(feature_stats)
        small = fn(jnp.asarray(rows))
        big = fn(jnp.asarray(np.tile(rows, (64, 1))))  # B = 256, the same four samples repeated
        np.testing.assert_allclose(small["l2_norm"], big["l2_norm"], rtol=1e-5)
        np.testing.assert_allclose(small["l2_norm_max"], big["l2_norm_max"], rtol=1e-6)
        frobenius_ratio = np.linalg.norm(np.tile(rows, (64, 1))) / np.linalg.norm(rows)
        assert frobenius_ratio == pytest.approx(8.0, rel=1e-5)  # what the original project logged: sqrt(64)


def test_finiteness_helpers():
    tree = {"a": jnp.array([3.0, 4.0]), "b": {"c": jnp.array([[12.0]])}, "n": jnp.array([1], jnp.int32)}
    assert bool(tree_all_finite(tree))
    assert bool(jax.jit(tree_all_finite)(tree))
    bad = {**tree, "b": {"c": jnp.array([[jnp.nan]])}, "z": jnp.array(jnp.inf)}
    assert not bool(tree_all_finite(bad))
    assert nonfinite_leaves(bad) == ["['b']['c']", "['z']"]
    assert nonfinite_leaves(tree) == []


def test_check_explosion():
    healthy = {"losses/critic_loss": 1.5, "debug/critic_cnn_features_l2_norm": 20.0, "losses/q1_mean": -3.0}
    assert check_explosion(healthy, l2_threshold=100.0) == []
    exploded = {
        **healthy,
        "debug/actor_cnn_features_l2_norm_max": jnp.float32(7.4e12),
        "debug/critic_cnn_features_l2_norm": np.float32(99.0),
        "losses/actor_loss": float("nan"),
        "losses/q2_mean": -math.inf,
        "debug/critic_cnn_features_max": 1e9,  # large but not an L2 statistic: not an alarm by itself
    }
    alarms = dict(check_explosion(exploded, l2_threshold=100.0))
    assert set(alarms) == {"debug/actor_cnn_features_l2_norm_max", "losses/actor_loss", "losses/q2_mean"}
    assert alarms["debug/actor_cnn_features_l2_norm_max"] == pytest.approx(7.4e12, rel=1e-6)
    assert math.isnan(alarms["losses/actor_loss"])
    with pytest.raises(ValueError, match="l2_threshold"):
        check_explosion(healthy, l2_threshold=0.0)
