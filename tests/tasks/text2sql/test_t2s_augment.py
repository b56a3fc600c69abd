"""Literal swapping: shared values are found, swapped consistently, and swapped gold SQL still
answers the swapped question (checked by executing it)."""

import random
import re

import duckdb

from zorro_jax.tasks.text2sql.augment import look_alike, shared_values, swap_literals


def test_look_alike_keeps_the_shape():
    rng = random.Random(0)
    for value in ["Madrid", "Tagus Air", "2021-10-01", "O'Hare", "A3b"]:
        new = look_alike(value, rng)
        assert len(new) == len(value)
        for a, b in zip(value, new):
            assert a.isupper() == b.isupper() and a.isdigit() == b.isdigit()
            assert (a.lower() in "aeiou") == (b.lower() in "aeiou")
            if not a.isalnum():
                assert a == b
    assert all(look_alike("7", rng) != "0" for _ in range(50))


def test_shared_values_only_what_the_question_says():
    q = "How many tickets from Madrid in 2020 cost more than 300, top 3 of them?"
    sql = ("SELECT COUNT(*) FROM t WHERE city = 'Madrid' AND c = 'Lisbon' AND y = 2020 "
           "AND price > 300 AND name LIKE '%2020%' LIMIT 1")
    strings, numbers = shared_values(q, sql)
    # 'Lisbon' is not in the question; LIMIT 1 is not; "2020" inside a string is a string.
    assert strings == ["Madrid", "2020"]
    assert numbers == ["2020", "300"]
    # A value must be a whole word of the question: "Graz" does not match "Grazer".
    assert shared_values("Who is from Grazer?", "SELECT 1 WHERE c = 'Graz'") == ([], [])


def test_swap_is_consistent_and_leaves_other_text_alone():
    rng = random.Random(1)
    q = "List passengers from Madrid or Tagus Air, not Madridian, in 2020 with name starting with C."
    sql = ("SELECT name FROM p WHERE (city = 'Madrid' OR a = 'Tagus Air') AND y = 2020 "
           "AND name LIKE 'C%' AND z = 12020")
    q2, sql2 = swap_literals(q, sql, rng)
    city = re.search(r"city = '([^']*)'", sql2).group(1)
    airline = re.search(r"a = '([^']*)'", sql2).group(1)
    year = re.search(r"y = (\d+)", sql2).group(1)
    letter = re.search(r"LIKE '([^']*)%'", sql2).group(1)
    assert city != "Madrid" and f"from {city} or" in q2 and "Madridian" in q2
    assert f"or {airline}," in q2 and airline != "Tagus Air" and " " in airline
    assert year != "2020" and f"in {year} " in q2
    assert letter != "C" and q2.endswith(f"starting with {letter}.")
    assert "z = 12020" in sql2
    assert swap_literals("How many?", "SELECT COUNT(*) FROM t", rng) == ("How many?", "SELECT COUNT(*) FROM t")


def test_swapped_gold_answers_the_swapped_question():
    """Insert the swapped value into the table: the swapped SQL finds exactly that row."""
    rng = random.Random(2)
    q, sql = "Which people live in Ghent?", "SELECT name FROM people WHERE city = 'Ghent'"
    q2, sql2 = swap_literals(q, sql, rng)
    new_city = q2.removeprefix("Which people live in ").removesuffix("?")
    con = duckdb.connect()
    con.execute("CREATE TABLE people(name VARCHAR, city VARCHAR)")
    con.execute("INSERT INTO people VALUES ('ann', 'Ghent'), ('bo', ?)", [new_city])
    assert con.execute(sql2).fetchall() == [("bo",)]
