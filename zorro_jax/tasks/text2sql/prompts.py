"""Prompts for the text-to-SQL policy and the answer format it is trained to produce.

Two styles:
  "ddl"      OmniSQL-like: the schema as CREATE TABLE statements with primary and foreign keys
             and a few example values per column as comments, then the question.
  "compact"  one line per table, `table(col, col, fk_col->other_table, ...)`, then the question;
             sized for a tiny policy with a small BPE vocabulary (a few hundred tokens).

With a token budget (`count_tokens` + `budget`), content is removed in this order until the prompt
fits: example values, then the non-key columns of the tables least related to the question, then
whole tables, least related first. Each removal is stated in the prompt so the policy is never
misled into thinking a column does not exist.

The answer is always one fenced ```sql block (`format_answer`), which `reward.extract_sql` reads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable

import duckdb

from zorro_jax.tasks.text2sql.reward import Task

STYLES = ("ddl", "compact")
SYSTEM_PROMPT = (
    "You translate questions into SQL for a DuckDB database. Read the schema, then answer with "
    "exactly one read-only SQL query inside a ```sql fenced block."
)
_INSTRUCTIONS = (
    "Write one DuckDB SELECT query that answers the question. Return only the columns the "
    "question asks for. Put the query in a ```sql block."
)


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of a prompt's schema: name, type and example values."""

    name: str
    type: str
    examples: tuple = ()


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of a prompt's schema: columns, primary key and foreign keys."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    # (column, referenced table, referenced column)
    foreign_keys: tuple[tuple[str, str, str], ...] = ()

    def key_columns(self) -> set[str]:
        """Names of the primary-key and foreign-key columns."""
        return set(self.primary_key) | {fk[0] for fk in self.foreign_keys}


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A rendered prompt: `system` for chat models, the user turn in two parts — `shared` (the
    database's schema and notes, the same for every question of the database when no budget
    trims it per question) and `question` (the question, its evidence and the instructions);
    `text` = shared + question. `omitted` lists what the token budget removed; `n_tokens` is
    counted on `text` when a counter was given."""

    system: str
    shared: str
    question: str
    omitted: tuple[str, ...] = ()
    n_tokens: int | None = None

    @property
    def text(self) -> str:
        """The whole user turn."""
        return self.shared + self.question


def format_answer(sql: str) -> str:
    """The completion the policy is trained to emit for `sql`."""
    return f"```sql\n{sql.strip()}\n```"


def keys_sidecar(db_path: str) -> str:
    """Optional JSON beside a database with keys DuckDB does not enforce (see spider.py)."""
    return os.path.splitext(db_path)[0] + ".keys.json"


@functools.lru_cache(maxsize=64)
def _describe(path: str, mtime: float, n_examples: int) -> tuple[Table, ...]:
    conn = duckdb.connect(path, read_only=True, config={"enable_external_access": False})
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
                "ORDER BY table_oid"
            ).fetchall()
        ]
        cols = conn.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE schema_name = 'main' ORDER BY table_oid, column_index"
        ).fetchall()
        cons = conn.execute(
            "SELECT table_name, constraint_type, constraint_column_names, referenced_table, "
            "referenced_column_names FROM duckdb_constraints() WHERE schema_name = 'main' AND "
            "constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')"
        ).fetchall()
        pks = {t: tuple(c) for t, kind, c, _, _ in cons if kind == "PRIMARY KEY"}
        fks: dict[str, list] = {}
        for t, kind, c, ref, ref_cols in cons:
            if kind == "FOREIGN KEY":
                fks.setdefault(t, []).extend(zip(c, [ref] * len(c), ref_cols))
        sidecar = keys_sidecar(path)
        if os.path.isfile(sidecar):
            with open(sidecar) as f:
                extra = json.load(f)
            for t, c in extra.get("primary_keys", {}).items():
                pks.setdefault(t, tuple(c))
            for t, items in extra.get("foreign_keys", {}).items():
                fks.setdefault(t, []).extend(tuple(i) for i in items)
        tables = []
        for name in names:
            columns = []
            for t, col, dtype in cols:
                if t != name:
                    continue
                examples = ()
                if n_examples:
                    q = (
                        f'SELECT DISTINCT "{col}" FROM "{name}" WHERE "{col}" IS NOT NULL '
                        f"LIMIT {n_examples}"
                    )
                    examples = tuple(r[0] for r in conn.execute(q).fetchall())
                columns.append(Column(col, dtype, examples))
            tables.append(Table(name, tuple(columns), pks.get(name, ()), tuple(fks.get(name, ()))))
        return tuple(tables)
    finally:
        conn.close()


def describe_database(db_path: str, n_examples: int = 3) -> tuple[Table, ...]:
    """Tables, columns, keys and example values of a DuckDB file (cached per file version)."""
    path = os.path.realpath(db_path)
    return _describe(path, os.path.getmtime(path), n_examples)


def _example_text(values: tuple, max_chars: int = 40) -> str:
    shown = []
    for v in values:
        s = repr(v) if isinstance(v, str) else str(v)
        shown.append(s if len(s) <= max_chars else s[: max_chars - 3] + "...'")
    return ", ".join(shown)


def _render_ddl(tables, trimmed: dict[str, set[str]], examples: bool) -> str:
    blocks = []
    for t in tables:
        keep = trimmed.get(t.name)
        entries = []  # (definition, trailing comment)
        for c in t.columns:
            if keep is not None and c.name not in keep:
                continue
            comment = (
                f" -- examples: {_example_text(c.examples)}" if examples and c.examples else ""
            )
            entries.append((f"{c.name} {c.type}", comment))
        if t.primary_key:
            entries.append((f"PRIMARY KEY ({', '.join(t.primary_key)})", ""))
        for col, ref, ref_col in t.foreign_keys:
            entries.append((f"FOREIGN KEY ({col}) REFERENCES {ref}({ref_col})", ""))
        lines = [
            f"  {d}{',' if i < len(entries) - 1 else ''}{c}" for i, (d, c) in enumerate(entries)
        ]
        if keep is not None:
            lines.append("  -- (other columns omitted)")
        blocks.append(f"CREATE TABLE {t.name} (\n" + "\n".join(lines) + "\n);")
    return "\n".join(blocks)


def _render_compact(tables, trimmed: dict[str, set[str]]) -> str:
    lines = []
    for t in tables:
        fk = {col: ref for col, ref, _ in t.foreign_keys}
        keep = trimmed.get(t.name)
        cols = [
            c.name + (f"->{fk[c.name]}" if c.name in fk else "")
            for c in t.columns
            if keep is None or c.name in keep
        ]
        if keep is not None:
            cols.append("...")
        lines.append(f"{t.name}({', '.join(cols)})")
    return "\n".join(lines)


def _words(text: str) -> set[str]:
    words = set()
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        words.add(w)
        if len(w) > 3 and w.endswith("s"):
            words.add(w[:-1])
    return words


def relevance(table: Table, question: str) -> float:
    """Lexical overlap of the question with a table's name (weighted) and column names."""
    q = _words(question)
    score = 3.0 * len(q & _words(table.name.replace("_", " ")))
    for c in table.columns:
        score += len(q & _words(c.name.replace("_", " ")))
    return score


def _render(task: Task, style: str, tables, trimmed, examples: bool, notes) -> tuple[str, str]:
    """(shared part, question part); every shared part ends with a newline, so the two parts
    tokenise apart at a word boundary."""
    question = task.question.strip()
    if task.evidence:
        question += f"\nHint: {task.evidence.strip()}"
    if style == "compact":
        body = _render_compact(tables, trimmed)
        note = "".join(f"-- {n}\n" for n in notes)
        return f"{body}\n{note}", f"Q: {question}"
    schema = _render_ddl(tables, trimmed, examples)
    note = "".join(f"-- Note: {n}\n" for n in notes)
    return (f"Database engine: DuckDB\n\nDatabase schema:\n{schema}\n{note}\n",
            f"Question:\n{question}\n\n{_INSTRUCTIONS}")


def build_prompt(
    task: Task,
    style: str = "ddl",
    count_tokens: Callable[[str], int] | None = None,
    budget: int | None = None,
    n_examples: int = 3,
) -> Prompt:
    """Render the prompt of `task`; with a counter and budget, shrink it as the module says."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if (count_tokens is None) != (budget is None):
        raise ValueError("count_tokens and budget must be given together")
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be positive, got {budget}")
    tables = list(describe_database(task.db_path, n_examples if style == "ddl" else 0))
    examples = style == "ddl" and n_examples > 0
    trimmed: dict[str, set[str]] = {}
    notes: list[str] = []
    omitted: list[str] = []

    def render():
        return "".join(_render(task, style, tables, trimmed, examples, notes))

    text = render()
    if count_tokens is None:
        return Prompt(SYSTEM_PROMPT, *_render(task, style, tables, trimmed, examples, notes))
    n = count_tokens(text)
    if n > budget and examples:
        examples = False
        notes.append("example values omitted to fit the length budget")
        omitted.append("examples")
        text = render()
        n = count_tokens(text)
    ranked = sorted(tables, key=lambda t: relevance(t, task.question))

    def trim(t: Table):
        nonlocal text, n
        keys = t.key_columns()
        if n > budget and t in tables and len(keys) < len(t.columns):
            trimmed[t.name] = keys
            omitted.append(f"columns:{t.name}")
            text = render()
            n = count_tokens(text)

    for t in ranked[:-1]:  # least relevant first: keep only their key columns
        trim(t)
    dropped: list[str] = []
    for t in ranked[:-1]:  # then whole tables, always keeping the most relevant one
        if n <= budget:
            break
        tables.remove(t)
        dropped.append(t.name)
        omitted.append(f"table:{t.name}")
        notes[:] = [x for x in notes if not x.startswith("tables not shown")]
        notes.append(f"tables not shown: {', '.join(dropped)}")
        text = render()
        n = count_tokens(text)
    trim(ranked[-1])
    return Prompt(SYSTEM_PROMPT, *_render(task, style, tables, trimmed, examples, notes),
                  tuple(omitted), n)
