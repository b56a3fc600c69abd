"""The built-in text-to-SQL benchmark: generated databases, templated questions, fixed splits.

On first use the databases are generated (schemas.py), every template (templates.py) is
instantiated with slot values read from the data, each gold query is validated (runs in the
sandbox, deterministic, non-empty, not the whole table, no tie at a LIMIT boundary), and the
result is written to `<root>/text2sql/<VERSION>/`, where root is the `cache_dir` argument, else
`$ZORRO_CACHE_DIR`, else `~/.cache/zorro_jax`. The folder is built under a temporary name and
renamed into place, so an interrupted build never leaves a half-written cache.

Splits: `test` holds every task drawn from the held-out schema (never in train or dev) plus
some unseen instances of the other schemas; `dev` and `train` share schemas but no gold query.
`rl` is a pool of RL prompts: further instances of the train schemas' templates (other slot
values), none of whose gold queries is in train, dev or test. SFT learns from `train`; GRPO can
draw prompts from `rl`, where the warm-started policy has not seen the answers.

    python -m zorro_jax.tasks.text2sql.benchmark --summary
"""

from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import json
import os
import random
import shutil
import string
import tempfile

import duckdb

from zorro_jax.tasks.text2sql import compare, schemas, templates
from zorro_jax.tasks.text2sql.executor import Executor, ExecutorConfig
from zorro_jax.tasks.text2sql.reward import Task

VERSION = "v2"
SPLITS = ("train", "dev", "test", "rl")
MAX_INSTANCES = 6  # per (schema, template), shared by train, dev and test
RL_INSTANCES = 20  # further instances per (schema, template) for the rl split
DEV_SIZE = 100
TEST_SEEN_SIZE = 40  # test tasks from schemas that are also in train
TEST_HELD_OUT_SIZE = 60
SPLIT_SEED = 1234


def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
    """Folder of this benchmark version (not created)."""
    root = (
        cache_dir
        or os.environ.get("ZORRO_CACHE_DIR")
        or os.path.join(os.path.expanduser("~"), ".cache", "zorro_jax")
    )
    return os.path.join(os.fspath(root), "text2sql", VERSION)


def sql_literal(value) -> str:
    """A Python value as a DuckDB SQL literal (quoted string, DATE literal, or number)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, datetime.date):
        return f"DATE '{value.isoformat()}'"
    return str(value)


def _nice(value) -> int:
    """Round a threshold to two significant digits so questions read naturally."""
    value = float(value)
    if abs(value) < 10:
        return round(value)
    digits = len(str(int(abs(value)))) - 2
    return int(round(value, -digits))


def _slot_candidates(conn, spec: schemas.SchemaSpec) -> dict[str, list]:
    fmt = spec.roles
    out: dict[str, list] = {k: list(v) for k, v in templates.CONSTANT_SLOTS.items()}
    for name, query in templates.SLOT_QUERIES.items():
        out[name] = [row[0] for row in conn.execute(query.format(**fmt)).fetchall()]
    for name in ("numv", "oyear"):
        values = out[name]
        picks = [values[int(len(values) * q)] for q in (0.2, 0.35, 0.5, 0.65, 0.8)]
        out[name] = sorted({_nice(v) if name == "numv" else int(v) for v in picks})
    out["oyear_v"] = out.pop("oyear")
    out["dates"] = [
        (datetime.date(y, m, 1), datetime.date(y, m, 1) + datetime.timedelta(89))
        for y in range(2019, 2024)
        for m in (1, 4, 7, 10)
    ]
    return out


def _slot_names(tmpl: templates.Template) -> list[str]:
    fields = set()
    for text in (tmpl.sql,) + tmpl.questions:
        fields |= {f for _, f, _, _ in string.Formatter().parse(text) if f}
    known = set(schemas.RETAIL.roles) | set(schemas.RETAIL.words)
    fields -= known
    # Derived slots are filled together with their source slot.
    renames = {
        "letter_like": "letter",
        "d1_lit": "dates",
        "d2_lit": "dates",
        "d1": "dates",
        "d2": "dates",
    }
    return sorted({renames.get(f, f) for f in fields})


def _fill(slots: dict) -> tuple[dict, dict]:
    """Slot values -> (question words, SQL literals)."""
    text, sql = {}, {}
    for name, value in slots.items():
        if name == "dates":
            d1, d2 = value
            text.update(d1=d1.isoformat(), d2=d2.isoformat())
            sql.update(d1_lit=sql_literal(d1), d2_lit=sql_literal(d2))
        elif name == "letter":
            text["letter"] = value
            sql["letter_like"] = sql_literal(value + "%")
        else:
            text[name] = str(value)
            sql[name] = sql_literal(value)
    return text, sql


def _valid_gold(ex: Executor, db_path: str, sql: str, tmpl, fmt: dict, sql_slots: dict) -> bool:
    first = ex.execute(sql, db_path)
    if not first.ok or first.truncated or not first.rows:
        return False
    second = ex.execute(sql, db_path)
    if not second.ok or compare.normalise_rows(first.rows) != compare.normalise_rows(second.rows):
        return False
    cells = [v for row in first.rows for v in row]
    if all(v is None for v in cells) or (len(cells) == 1 and cells[0] in (0, None)):
        return False
    if tmpl.filter_of:
        total = ex.execute(f"SELECT COUNT(*) FROM {fmt[tmpl.filter_of]}", db_path).rows[0][0]
        if len(first.rows) >= total:
            return False
    if tmpl.tie_sql:
        n = 1 if tmpl.limit == "1" else int(sql_slots[tmpl.limit])
        keys = ex.execute(tmpl.tie_sql.format(**fmt), db_path)
        if not keys.ok or len(keys.rows) <= n or keys.rows[n - 1] == keys.rows[n]:
            return False
    return True


def _instances(ex: Executor, db_path: str, spec: schemas.SchemaSpec, cands: dict):
    """Yield (record, extra) pairs: up to MAX_INSTANCES validated instances per template for
    train/dev/test (extra=False), then, for templates with slots, up to RL_INSTANCES more from
    the slot combinations left over (extra=True). The extras use their own random stream, so
    the base instances do not depend on RL_INSTANCES."""
    rng = random.Random(spec.seed * 7919)
    fmt = {**spec.roles, **spec.words}
    leftovers = []
    for tmpl in templates.TEMPLATES:
        names = _slot_names(tmpl)
        combos = list(itertools.product(*(cands[n] for n in names)))
        rng.shuffle(combos)
        made = 0
        for i, combo in enumerate(combos):
            text_slots, sql_slots = _fill(dict(zip(names, combo)))
            sql = tmpl.sql.format(**spec.roles, **sql_slots)
            if not _valid_gold(ex, db_path, sql, tmpl, spec.roles, sql_slots):
                continue
            # Slot-free templates have a single gold query: vary the paraphrase instead.
            phrasings = (
                range(len(tmpl.questions)) if not names else [rng.randrange(len(tmpl.questions))]
            )
            for p in phrasings:
                question = tmpl.questions[p].format(**fmt, **text_slots)
                yield _record(spec, tmpl, made, question, sql), False
                made += 1
            if made >= MAX_INSTANCES:
                if names:
                    leftovers.append((tmpl, names, combos[i + 1 :], made))
                break
    extra_rng = random.Random(spec.seed * 7919 + 1)
    for tmpl, names, combos, made in leftovers:
        extra = 0
        for combo in combos:
            if extra >= RL_INSTANCES:
                break
            text_slots, sql_slots = _fill(dict(zip(names, combo)))
            sql = tmpl.sql.format(**spec.roles, **sql_slots)
            if not _valid_gold(ex, db_path, sql, tmpl, spec.roles, sql_slots):
                continue
            question = tmpl.questions[extra_rng.randrange(len(tmpl.questions))].format(**fmt, **text_slots)
            yield _record(spec, tmpl, made + extra, question, sql), True
            extra += 1


def _record(spec, tmpl, index: int, question: str, sql: str) -> dict:
    return {
        "task_id": f"{spec.db_id}/{tmpl.template_id}/{index}",
        "db_id": spec.db_id,
        "question": question[0].upper() + question[1:],
        "gold_sql": sql,
        "difficulty": tmpl.difficulty,
        "template_id": tmpl.template_id,
    }


def write_database(path: str, spec: schemas.SchemaSpec):
    """Create the DuckDB file at `path` with the schema's tables and its seeded rows."""
    conn = duckdb.connect(path)
    try:
        for ddl in spec.ddl:
            conn.execute(ddl)
        # Insert parents before children so the foreign keys hold.
        order = [spec.roles[k] for k in ("G", "E", "O", "V")]
        rows = schemas.generate_rows(spec)
        for table in order + [t for t in rows if t not in order]:
            # Multi-row INSERTs: executemany costs one round trip per row.
            one = "(" + ", ".join("?" * len(rows[table][0])) + ")"
            for i in range(0, len(rows[table]), 200):
                chunk = rows[table][i : i + 200]
                params = [v for row in chunk for v in row]
                conn.execute(f"INSERT INTO {table} VALUES " + ", ".join([one] * len(chunk)), params)
        conn.execute("CHECKPOINT")
    finally:
        conn.close()


def _split(records: list[dict], extras: list[dict]) -> dict[str, list[dict]]:
    rng = random.Random(SPLIT_SEED)
    groups: dict[tuple, list[dict]] = collections.defaultdict(list)
    for rec in records:
        groups[(rec["db_id"], rec["gold_sql"])].append(rec)
    held = [g for k, g in groups.items() if k[0] == schemas.HELD_OUT]
    seen = [g for k, g in groups.items() if k[0] != schemas.HELD_OUT]
    rng.shuffle(held)
    rng.shuffle(seen)
    out = {s: [] for s in SPLITS}
    for group in held:
        if len(out["test"]) < TEST_HELD_OUT_SIZE:
            out["test"].extend(group)
    for group in seen:
        if len(out["dev"]) < DEV_SIZE:
            out["dev"].extend(group)
        elif len(out["test"]) < TEST_HELD_OUT_SIZE + TEST_SEEN_SIZE:
            out["test"].extend(group)
        else:
            out["train"].extend(group)
    # The RL pool: extra instances of schemas seen in training whose gold query no other split has.
    taken = {(r["db_id"], r["gold_sql"]) for recs in out.values() for r in recs}
    out["rl"] = [r for r in extras if r["db_id"] != schemas.HELD_OUT and (r["db_id"], r["gold_sql"]) not in taken]
    for split in out.values():
        split.sort(key=lambda r: r["task_id"])
    return out


def build(folder: str):
    """Generate the databases and splits into `folder` (which must be empty)."""
    os.makedirs(os.path.join(folder, "db"), exist_ok=True)
    records, extras = [], []
    with Executor(ExecutorConfig(timeout_s=10.0)) as ex:
        for spec in schemas.SCHEMAS:
            rel = os.path.join("db", f"{spec.db_id}.duckdb")
            path = os.path.join(folder, rel)
            write_database(path, spec)
            conn = duckdb.connect(path, read_only=True)
            try:
                cands = _slot_candidates(conn, spec)
            finally:
                conn.close()
            for rec, extra in _instances(ex, path, spec, cands):
                (extras if extra else records).append({**rec, "db_path": rel})
    splits = _split(records, extras)
    for name, recs in splits.items():
        with open(os.path.join(folder, f"{name}.jsonl"), "w") as f:
            for rec in recs:
                f.write(json.dumps(rec) + "\n")
    manifest = {
        "version": VERSION,
        "held_out": schemas.HELD_OUT,
        "sizes": {k: len(v) for k, v in splits.items()},
    }
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def ensure_built(cache_dir: str | os.PathLike | None = None) -> str:
    """Path of the built benchmark, building it (atomically) if absent."""
    final = cache_root(cache_dir)
    if os.path.isfile(os.path.join(final, "manifest.json")):
        return final
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{VERSION}-building-", dir=parent)
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first; its copy is identical.
            if not os.path.isfile(os.path.join(final, "manifest.json")):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_builtin(split: str, cache_dir: str | os.PathLike | None = None) -> list[Task]:
    """Tasks of a split ("train", "dev", "test", "rl"), building the cache on first use."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = ensure_built(cache_dir)
    tasks = []
    with open(os.path.join(folder, f"{split}.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            rec["db_path"] = os.path.join(folder, rec["db_path"])
            tasks.append(Task(**rec))
    return tasks


def summary(cache_dir: str | os.PathLike | None = None) -> str:
    """Split sizes, difficulties and databases of the built benchmark, as text."""
    lines = [
        f"built-in text-to-SQL benchmark {VERSION} at {ensure_built(cache_dir)}",
        f"held-out schema (test only): {schemas.HELD_OUT}",
    ]
    for split in SPLITS:
        tasks = load_builtin(split, cache_dir)
        diff = collections.Counter(t.difficulty for t in tasks)
        dbs = collections.Counter(t.db_id for t in tasks)
        lines.append(
            f"{split:5s} {len(tasks):5d} tasks  "
            + "  ".join(f"{d}={diff[d]}" for d in ("easy", "medium", "hard"))
            + "  | "
            + " ".join(f"{k}={v}" for k, v in sorted(dbs.items()))
        )
    lines.append(
        f"templates: {len(templates.TEMPLATES)}  schemas: "
        + ", ".join(s.db_id for s in schemas.SCHEMAS)
    )
    return "\n".join(lines)


def main(argv=None):
    """Command line: build the benchmark and print its folder (or its summary)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--summary", action="store_true", help="print split statistics")
    parser.add_argument("--cache-dir", default=None, help="root folder (default: see docs)")
    args = parser.parse_args(argv)
    path = ensure_built(args.cache_dir)
    print(summary(args.cache_dir) if args.summary else path)


if __name__ == "__main__":
    main()
