"""The benchmark's token / attention-pair / FLOP counts agree with the packed layout's mask."""

import numpy as np

from experiments.bench_actor_update import (
    DISTRIBUTIONS,
    make_groups,
    model_flops,
    tree_counts,
    variant_trees,
)
from experiments.common import bench_model_of_width
from pallas_kernels.tree_blocks import visible_mask
from zorro_jax.layouts import pack_groups_balanced


def test_tree_counts_match_the_packed_mask():
    rng = np.random.default_rng(0)
    schema = rng.integers(3, 50, 7)
    groups = [(np.concatenate([schema, rng.integers(3, 50, n)]), [rng.integers(3, 50, c) for c in cs])
              for n, cs in ((3, (2, 0, 5)), (1, (4, 4, 1)), (6, (1, 3, 2)))]
    for name, trees in variant_trees(groups, [7, 7, 7]).items():
        tokens, pairs = tree_counts(trees)
        [mb] = pack_groups_balanced(trees, token_budget=4096, rows_per_batch=1, loss_width=5,
                                    tiles=(16, 16))
        end = np.asarray(mb.packed.subtree_end_NxT)
        real = np.asarray(mb.packed.prev_NxT) >= 0
        real |= np.arange(end.shape[1])[None] < end - 1  # a root's first token has no predictor
        mask = np.asarray(visible_mask(end)) & real[:, :, None] & real[:, None, :]
        assert tokens == int(real.sum()), name
        assert pairs == int(mask.sum()), name


def test_schema_distribution_shares_three_levels():
    groups, shared = make_groups(DISTRIBUTIONS["schema"], 2048)
    trees = variant_trees(groups, shared)
    naive, two, three = (tree_counts(trees[k])[0] for k in
                         ("packed_naive", "packed_prompt_once", "packed_three_level"))
    assert naive > two > three and len(trees["packed_three_level"]) == 1
    cfg = bench_model_of_width(256)
    scored = sum(len(c) for _, cs in groups for c in cs)
    flops = {k: model_flops(cfg, t, scored) for k, t in trees.items()}
    # FLOPs shrink less than tokens: the schema's descendants still attend to all of it.
    assert 1 < flops["packed_prompt_once"] / flops["packed_three_level"] < two / three


def test_model_option_without_a_fetched_model_says_how_to_fetch(tmp_path, monkeypatch, capsys):
    import pytest

    from experiments import bench_actor_update, bench_rollout

    monkeypatch.setenv("ZORRO_JAX_CACHE", str(tmp_path))
    with pytest.raises(SystemExit):
        bench_actor_update.main(["--model", "smollm2-135m", "--distributions", "sql", "--groups", "1"])
    assert "python -m experiments.fetch_model smollm2-135m" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_rollout.main(["--model", "smollm2-135m", "--distributions", "sql"])
    assert "python -m experiments.fetch_model smollm2-135m" in capsys.readouterr().err
