"""GRPO-family losses and advantages against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from zorro_jax.rl.losses import LossConfig, compute_advantages, loss_normaliser, policy_loss


def test_grpo_advantage_uses_population_std_and_zero_for_equal_groups():
    r = jnp.asarray([[1.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1]])
    a = np.asarray(compute_advantages(r, LossConfig(advantage="grpo")))
    # mean .25, population std sqrt(.1875) = .4330 -> 1.7320 (sample std would give 1.5).
    np.testing.assert_allclose(a[0], [1.7320508, -0.5773503, -0.5773503, -0.5773503], rtol=1e-5)
    assert np.all(a[1] == 0.0) and np.all(np.isfinite(a))
    d = np.asarray(compute_advantages(r, LossConfig(advantage="dr_grpo")))
    np.testing.assert_allclose(d[0], [0.75, -0.25, -0.25, -0.25], rtol=1e-6)
    assert np.all(d[1] == 0.0)


def _case():
    # One group, two samples: sample 0 has 2 tokens, sample 1 has 1 token (R = 3).
    logp = jnp.log(jnp.asarray([[[1.5, 1.0, 9.0], [0.5, 9.0, 9.0]]]))
    old = jnp.zeros((1, 2, 3))
    adv = jnp.asarray([[1.0, -1.0]])
    mask = jnp.asarray([[[True, True, False], [True, False, False]]])
    return logp, old, adv, mask


def test_clip_higher_token_mean_hand_values():
    logp, old, adv, mask = _case()
    cfg = LossConfig(clip_low=0.2, clip_high=0.28)
    loss, m = policy_loss(logp, old, adv, mask, loss_normaliser(mask, cfg), cfg)
    # token 0: A=+1, ratio 1.5 -> clipped to 1.28 -> -1.28; token 1: ratio 1 -> -1;
    # sample 1: A=-1, ratio .5 -> max(.5, .8) = .8.  Token mean over 3 tokens.
    np.testing.assert_allclose(float(loss), (-1.28 - 1.0 + 0.8) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(m["clip_fraction"]), 2 / 3, rtol=1e-6)
    # Symmetric clipping at 0.2 gives a different value (-1.2 instead of -1.28).
    sym = LossConfig(clip_low=0.2, clip_high=0.2)
    loss_sym, _ = policy_loss(logp, old, adv, mask, loss_normaliser(mask, sym), sym)
    np.testing.assert_allclose(float(loss_sym), (-1.2 - 1.0 + 0.8) / 3, rtol=1e-6)


def test_sequence_mean_and_dr_grpo_aggregations():
    logp, old, adv, mask = _case()
    seq = LossConfig(aggregation="seq_mean")
    loss, _ = policy_loss(logp, old, adv, mask, loss_normaliser(mask, seq), seq)
    np.testing.assert_allclose(float(loss), ((-1.28 - 1.0) / 2 + 0.8) / 2, rtol=1e-6)
    dr = LossConfig(aggregation="dr_grpo")
    loss, _ = policy_loss(logp, old, adv, mask, loss_normaliser(mask, dr), dr)
    np.testing.assert_allclose(float(loss), (-1.28 - 1.0 + 0.8) / (2 * 3), rtol=1e-6)


def test_k3_kl_term():
    logp, old, adv, mask = _case()
    ref = logp + jnp.log(2.0)  # ref/π = 2 everywhere -> k3 = 2 - log 2 - 1
    cfg = LossConfig(kl_coef=0.5)
    base, _ = policy_loss(logp, old, adv, mask, 3.0, LossConfig())
    loss, m = policy_loss(logp, old, adv, mask, 3.0, cfg, ref_logp_BxGxR=ref)
    k3 = 2 - np.log(2) - 1
    np.testing.assert_allclose(float(m["kl"]), k3, rtol=1e-5)
    np.testing.assert_allclose(float(loss - base), 0.5 * k3, rtol=1e-5)


def test_config_errors():
    with pytest.raises(ValueError, match="registered"):
        LossConfig(advantage="ppo")
    with pytest.raises(ValueError, match="aggregation"):
        LossConfig(aggregation="mean")
