"""Result comparison: hand-made cases that separate the bird (set) and spider (bag) rules."""

import datetime
import decimal

import pytest

from zorro_jax.tasks.text2sql.compare import gold_orders_rows, normalise_value, results_match


def both(pred, gold, order=False):
    return (
        results_match(pred, gold, rule="bird"),
        results_match(pred, gold, rule="spider", order_matters=order),
    )


def test_duplicates_separate_rules():
    gold = [(1, "a"), (2, "b")]
    pred = [(1, "a"), (1, "a"), (2, "b")]
    assert both(pred, gold) == (True, False)  # set equal, bag different


def test_row_order_matters_only_for_spider_with_order_by():
    gold = [(1,), (2,), (3,)]
    pred = [(3,), (1,), (2,)]
    assert both(pred, gold, order=False) == (True, True)
    assert both(pred, gold, order=True) == (True, False)
    assert both(gold, gold, order=True) == (True, True)


def test_column_permutation_allowed_by_spider_only():
    gold = [("Lisbon", 3), ("Porto", 5)]
    pred = [(3, "Lisbon"), (5, "Porto")]
    assert both(pred, gold) == (False, True)
    # A permutation that matches column bags but breaks row pairing must fail.
    gold2 = [(1, 2), (2, 1)]
    assert results_match([(1, 2), (2, 1)], gold2, rule="spider")
    assert not results_match([(1, 1), (2, 2)], gold2, rule="spider")


def test_float_noise_is_tolerated_but_real_differences_are_not():
    gold = [(0.3, 1), (2.0 / 3.0, 2)]
    pred = [(0.1 + 0.2, 1), (0.6666666666666666, 2)]
    assert both(pred, gold) == (True, True)
    assert both([(0.31, 1), (2.0 / 3.0, 2)], gold) == (False, False)
    assert results_match([(1e-12,)], [(0.0,)])
    assert results_match([(3,)], [(3.0,)])
    assert not results_match([("3",)], [(3,)])


def test_normalisation_of_nulls_dates_decimals():
    assert results_match([(None, 1)], [(None, 1)])
    assert not results_match([(None,)], [(0,)])
    assert results_match([(decimal.Decimal("12.50"),)], [(12.5,)])
    assert results_match([(datetime.datetime(2021, 5, 1),)], [(datetime.date(2021, 5, 1),)])
    assert results_match([(datetime.date(2021, 5, 1),)], [("2021-05-01",)])
    assert normalise_value(True) == 1
    assert normalise_value(decimal.Decimal("7.00")) == 7


def test_shapes_and_empty():
    assert both([], []) == (True, True)
    assert both([(1,)], []) == (False, False)
    assert both([(1, 2)], [(1,)]) == (False, False)
    with pytest.raises(ValueError):
        results_match([], [], rule="exact")


def test_mixed_types_sort_without_error():
    rows = [(None,), (1,), ("a",), (2.5,)]
    assert results_match(list(reversed(rows)), rows, rule="spider")


def test_gold_orders_rows_is_top_level_only():
    assert gold_orders_rows("SELECT a FROM t ORDER BY a")
    assert not gold_orders_rows("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3)")
    assert not gold_orders_rows("SELECT a FROM t WHERE b IN (SELECT b FROM u ORDER BY b)")
