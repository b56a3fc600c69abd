"""A large SQLite database shaped like Spider's (numbers in TEXT columns, NULLs), and the time
`sqlite_copy.copy_sqlite_to_duckdb` takes to copy it.

    .venv/bin/python tests/tasks/text2sql/copy_timing.py --rows 1000000
"""

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time

# One row per car: integer key, name, horsepower as integer text, mpg as integer or decimal
# text, a real, and an integer that is NULL in one row of 17.
_SCHEMA = (
    "CREATE TABLE cars (id INTEGER PRIMARY KEY, name TEXT, horsepower TEXT, mpg TEXT, "
    "price REAL, qty INTEGER)"
)


def write_wide_sqlite(path: str, n_rows: int, seed: int = 0) -> str:
    """Write `n_rows` deterministic rows into a new SQLite file at `path`."""
    if os.path.exists(path):
        os.remove(path)
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.execute(_SCHEMA)
    conn.executemany(
        "INSERT INTO cars VALUES (?, ?, ?, ?, ?, ?)",
        (
            (
                i,
                f"car {i % 1000}",
                str(rng.randrange(40, 400)),
                rng.choice(["18", "31.5", "22.25", "15"]),
                rng.random() * 100,
                None if i % 17 == 0 else rng.randrange(1000),
            )
            for i in range(n_rows)
        ),
    )
    conn.commit()
    conn.close()
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))))
    from zorro_jax.tasks.text2sql.sqlite_copy import copy_sqlite_to_duckdb

    with tempfile.TemporaryDirectory() as tmp:
        src = write_wide_sqlite(os.path.join(tmp, "cars.sqlite"), args.rows)
        start = time.perf_counter()
        types = copy_sqlite_to_duckdb(src, os.path.join(tmp, "cars.duckdb"))
        seconds = time.perf_counter() - start
    kinds = {c: t.duckdb for c, t in types["cars"].items()}
    print(f"{args.rows} rows copied in {seconds:.2f} s; types {kinds}")


if __name__ == "__main__":
    main()
