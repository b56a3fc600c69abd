"""Question templates of the built-in benchmark: paraphrases plus gold SQL over schema roles.

Placeholders: `{E}`, `{E_num}`, ... are the role identifiers of `schemas.SchemaSpec.roles`;
`{ents}`, `{num}`, ... are its English words; anything else is a slot filled from the data
(`{city}`, `{year}`, `{grpv}`, ...). In SQL a slot becomes a literal, in the question plain text.

Templates are deliberately regular (one SQL style, a few paraphrases each) so that a very small
policy can learn the mapping, while covering filters, aggregates, GROUP BY / HAVING, 2-3-table
joins, ORDER BY / LIMIT, nested subqueries and date arithmetic.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Template:
    """A question template: paraphrases with slots, the gold SQL pattern, and the checks an instance
    must pass.
    """

    template_id: str
    difficulty: str
    questions: tuple[str, ...]
    sql: str
    # Role whose table a filter result must not cover entirely ("not trivially the whole table").
    filter_of: str = ""
    # For ORDER BY ... LIMIT templates: the same ordering without LIMIT, returning only the sort
    # key; instances whose n-th and (n+1)-th keys tie are rejected as ambiguous.
    tie_sql: str = ""
    # Slot holding the LIMIT (or "1" for LIMIT 1) used by the tie check.
    limit: str = ""

    def __post_init__(self):
        if self.difficulty not in ("easy", "medium", "hard"):
            raise ValueError(f"{self.template_id}: bad difficulty {self.difficulty!r}")
        if not self.questions:
            raise ValueError(f"{self.template_id}: no questions")
        if bool(self.tie_sql) != bool(self.limit):
            raise ValueError(f"{self.template_id}: tie_sql and limit go together")


# SQL returning the candidate values of each data-driven slot, in a stable order.
SLOT_QUERIES = {
    "city": "SELECT DISTINCT {O_city} FROM {O} ORDER BY 1",
    "grpv": "SELECT {G_name} FROM {G} ORDER BY 1",
    "gattrv": "SELECT DISTINCT {G_attr} FROM {G} ORDER BY 1",
    "entv": "SELECT {E_name} FROM {E} WHERE {E_pk} IN (SELECT {V_E} FROM {V}) ORDER BY 1",
    "othv": "SELECT {O_name} FROM {O} WHERE {O_pk} IN (SELECT {V_O} FROM {V}) ORDER BY 1",
    "year": "SELECT DISTINCT CAST(EXTRACT(YEAR FROM {V_date}) AS INTEGER) FROM {V} ORDER BY 1",
    "oyear": "SELECT DISTINCT {O_year} FROM {O} ORDER BY 1",
    "numv": "SELECT DISTINCT {E_num} FROM {E} ORDER BY 1",
    "letter": "SELECT DISTINCT LEFT({E_name}, 1) FROM {E} ORDER BY 1",
}
# Slots with fixed candidates.
CONSTANT_SLOTS = {
    "n": (3, 5),
    "k": (2, 3, 4, 5, 6, 7, 8),
}

_J_EG = "FROM {E} AS e JOIN {G} AS g ON e.{E_fk} = g.{G_pk}"
_J_VO = "FROM {V} AS v JOIN {O} AS o ON v.{V_O} = o.{O_pk}"
_J_VE = "FROM {V} AS v JOIN {E} AS e ON v.{V_E} = e.{E_pk}"
_YEAR = "EXTRACT(YEAR FROM {V_date})"
_VYEAR = "EXTRACT(YEAR FROM v.{V_date})"

T = Template
TEMPLATES: tuple[Template, ...] = (
    # --- easy: one table ---------------------------------------------------------------------
    T(
        "count_ents",
        "easy",
        ("How many {ents} are there?", "Count the {ents}.", "What is the total number of {ents}?"),
        "SELECT COUNT(*) FROM {E}",
    ),
    T(
        "oths_in_city",
        "easy",
        (
            "List the names of {oths} from {city}.",
            "Which {oths} live in {city}?",
            "Show the names of all {oths} in {city}.",
        ),
        "SELECT {O_name} FROM {O} WHERE {O_city} = {city}",
        filter_of="O",
    ),
    T(
        "count_oths_city",
        "easy",
        ("How many {oths} are from {city}?", "Count the {oths} living in {city}."),
        "SELECT COUNT(*) FROM {O} WHERE {O_city} = {city}",
    ),
    T(
        "ents_num_gt",
        "easy",
        (
            "Which {ents} have a {num} greater than {numv}?",
            "List the {ents} whose {num} is above {numv}.",
        ),
        "SELECT {E_name} FROM {E} WHERE {E_num} > {numv}",
        filter_of="E",
    ),
    T(
        "ents_num_lt",
        "easy",
        ("Which {ents} have a {num} below {numv}?", "List the {ents} with {num} less than {numv}."),
        "SELECT {E_name} FROM {E} WHERE {E_num} < {numv}",
        filter_of="E",
    ),
    T(
        "max_num",
        "easy",
        ("What is the highest {num} of any {ent}?", "Find the maximum {num} among all {ents}."),
        "SELECT MAX({E_num}) FROM {E}",
    ),
    T(
        "min_amt",
        "easy",
        ("What is the lowest {amt} of any {evt}?", "Find the minimum {amt} over all {evts}."),
        "SELECT MIN({V_amt}) FROM {V}",
    ),
    T(
        "avg_amt",
        "easy",
        ("What is the average {amt} of {evts}?", "Compute the mean {amt} across all {evts}."),
        "SELECT AVG({V_amt}) FROM {V}",
    ),
    T(
        "evts_in_year",
        "easy",
        ("How many {evts} were there in {year}?", "Count the {evts} from the year {year}."),
        "SELECT COUNT(*) FROM {V} WHERE " + _YEAR + " = {year}",
    ),
    T(
        "sum_amt_year",
        "easy",
        ("What was the total {amt} of {evts} in {year}?", "Sum the {amt} of all {evts} in {year}."),
        "SELECT SUM({V_amt}) FROM {V} WHERE " + _YEAR + " = {year}",
    ),
    T(
        "distinct_cities",
        "easy",
        ("Which cities do {oths} come from?", "List the distinct cities of the {oths}."),
        "SELECT DISTINCT {O_city} FROM {O}",
    ),
    T(
        "oths_year_after",
        "easy",
        (
            "Which {oths} {oyear} after {oyear_v}?",
            "List the {oths} who {oyear} later than {oyear_v}.",
        ),
        "SELECT {O_name} FROM {O} WHERE {O_year} > {oyear_v}",
        filter_of="O",
    ),
    T(
        "ents_prefix",
        "easy",
        (
            "Which {ents} have a name starting with {letter}?",
            "List the {ents} whose name begins with the letter {letter}.",
        ),
        "SELECT {E_name} FROM {E} WHERE {E_name} LIKE {letter_like}",
        filter_of="E",
    ),
    T(
        "count_grps_attr",
        "easy",
        ("How many {grps} have {gattr} {gattrv}?", "Count the {grps} whose {gattr} is {gattrv}."),
        "SELECT COUNT(*) FROM {G} WHERE {G_attr} = {gattrv}",
    ),
    # --- medium: joins, grouping, ordering ----------------------------------------------------
    T(
        "count_per_grp",
        "medium",
        ("How many {ents} does each {grp} have?", "For every {grp}, count its {ents}."),
        "SELECT g.{G_name}, COUNT(*) " + _J_EG + " GROUP BY g.{G_name}",
    ),
    T(
        "avg_num_per_grp",
        "medium",
        (
            "What is the average {num} of {ents} in each {grp}?",
            "Show the mean {num} of the {ents} per {grp}.",
        ),
        "SELECT g.{G_name}, AVG(e.{E_num}) " + _J_EG + " GROUP BY g.{G_name}",
    ),
    T(
        "ents_in_grp",
        "medium",
        ("List the {ents} of the {grp} {grpv}.", "Which {ents} belong to the {grp} {grpv}?"),
        "SELECT e.{E_name} " + _J_EG + " WHERE g.{G_name} = {grpv}",
        filter_of="E",
    ),
    T(
        "ents_in_attr",
        "medium",
        (
            "List the {ents} of {grps} with {gattr} {gattrv}.",
            "Which {ents} belong to a {grp} whose {gattr} is {gattrv}?",
        ),
        "SELECT e.{E_name} " + _J_EG + " WHERE g.{G_attr} = {gattrv}",
        filter_of="E",
    ),
    T(
        "count_evts_city",
        "medium",
        (
            "How many {evts} were made by {oths} from {city}?",
            "Count the {evts} of {oths} living in {city}.",
        ),
        "SELECT COUNT(*) " + _J_VO + " WHERE o.{O_city} = {city}",
    ),
    T(
        "amt_per_year",
        "medium",
        (
            "What is the total {amt} of {evts} per year?",
            "Show the yearly sum of {amt} over all {evts}.",
        ),
        "SELECT " + _YEAR + " AS yr, SUM({V_amt}) FROM {V} GROUP BY yr",
    ),
    T(
        "grps_having",
        "medium",
        ("Which {grps} have more than {k} {ents}?", "List the {grps} with over {k} {ents}."),
        "SELECT g.{G_name} " + _J_EG + " GROUP BY g.{G_name} HAVING COUNT(*) > {k}",
        filter_of="G",
    ),
    T(
        "oths_having",
        "medium",
        ("Which {oths} have more than {k} {evts}?", "List the {oths} with over {k} {evts}."),
        "SELECT o.{O_name} " + _J_VO + " GROUP BY o.{O_name} HAVING COUNT(*) > {k}",
        filter_of="O",
    ),
    T(
        "top_ent",
        "medium",
        ("Which {ent} has the highest {num}?", "Name the {ent} with the largest {num}."),
        "SELECT {E_name} FROM {E} ORDER BY {E_num} DESC LIMIT 1",
        tie_sql="SELECT {E_num} FROM {E} ORDER BY {E_num} DESC",
        limit="1",
    ),
    T(
        "top_n_ents",
        "medium",
        ("List the {n} {ents} with the highest {num}.", "What are the top {n} {ents} by {num}?"),
        "SELECT {E_name} FROM {E} ORDER BY {E_num} DESC LIMIT {n}",
        tie_sql="SELECT {E_num} FROM {E} ORDER BY {E_num} DESC",
        limit="n",
    ),
    T(
        "bottom_n_ents",
        "medium",
        ("List the {n} {ents} with the lowest {num}.", "Which {n} {ents} have the smallest {num}?"),
        "SELECT {E_name} FROM {E} ORDER BY {E_num} ASC LIMIT {n}",
        tie_sql="SELECT {E_num} FROM {E} ORDER BY {E_num} ASC",
        limit="n",
    ),
    T(
        "evts_per_month",
        "medium",
        (
            "How many {evts} were there in each month of {year}?",
            "Count the {evts} per month in {year}.",
        ),
        "SELECT EXTRACT(MONTH FROM {V_date}) AS mon, COUNT(*) FROM {V} WHERE "
        + _YEAR
        + " = {year} GROUP BY mon",
    ),
    T(
        "city_counts",
        "medium",
        ("How many {oths} are there in each city?", "Count the {oths} per city."),
        "SELECT {O_city}, COUNT(*) FROM {O} GROUP BY {O_city}",
    ),
    T(
        "total_amt_ent",
        "medium",
        (
            "What is the total {amt} of {evts} for the {ent} {entv}?",
            "Sum the {amt} of all {evts} of {entv}.",
        ),
        "SELECT SUM(v.{V_amt}) " + _J_VE + " WHERE e.{E_name} = {entv}",
    ),
    T(
        "evts_between",
        "medium",
        (
            "How many {evts} happened between {d1} and {d2}?",
            "Count the {evts} dated from {d1} to {d2}.",
        ),
        "SELECT COUNT(*) FROM {V} WHERE {V_date} BETWEEN {d1_lit} AND {d2_lit}",
    ),
    T(
        "last_evt_oth",
        "medium",
        (
            "When was the most recent {evt} of {othv}?",
            "What is the date of the latest {evt} by {othv}?",
        ),
        "SELECT MAX(v.{V_date}) " + _J_VO + " WHERE o.{O_name} = {othv}",
    ),
    T(
        "top_city",
        "medium",
        ("Which city has the most {oths}?", "Name the city with the largest number of {oths}."),
        "SELECT {O_city} FROM {O} GROUP BY {O_city} ORDER BY COUNT(*) DESC LIMIT 1",
        tie_sql="SELECT COUNT(*) AS c FROM {O} GROUP BY {O_city} ORDER BY c DESC",
        limit="1",
    ),
    T(
        "ent_most_evts",
        "medium",
        ("Which {ent} has the most {evts}?", "Name the {ent} with the largest number of {evts}."),
        "SELECT e.{E_name} " + _J_VE + " GROUP BY e.{E_name} ORDER BY COUNT(*) DESC LIMIT 1",
        tie_sql="SELECT COUNT(*) AS c " + _J_VE + " GROUP BY e.{E_name} ORDER BY c DESC",
        limit="1",
    ),
    # --- hard: nesting, three tables, HAVING on aggregates -------------------------------------
    T(
        "ents_above_avg",
        "hard",
        (
            "Which {ents} have a {num} above the average?",
            "List the {ents} whose {num} exceeds the mean {num}.",
        ),
        "SELECT {E_name} FROM {E} WHERE {E_num} > (SELECT AVG({E_num}) FROM {E})",
        filter_of="E",
    ),
    T(
        "oths_no_evts",
        "hard",
        ("Which {oths} have no {evts}?", "List the {oths} who never had any {evts}."),
        "SELECT {O_name} FROM {O} WHERE {O_pk} NOT IN (SELECT {V_O} FROM {V})",
        filter_of="O",
    ),
    T(
        "amt_per_grp",
        "hard",
        ("What is the total {amt} of {evts} for each {grp}?", "Show the sum of {amt} per {grp}."),
        "SELECT g.{G_name}, SUM(v.{V_amt}) " + _J_VE + " JOIN {G} AS g ON e.{E_fk} = g.{G_pk} "
        "GROUP BY g.{G_name}",
    ),
    T(
        "top_grp_amt",
        "hard",
        (
            "Which {grp} has the highest total {amt}?",
            "Name the {grp} whose {evts} have the largest total {amt}.",
        ),
        "SELECT g.{G_name} " + _J_VE + " JOIN {G} AS g ON e.{E_fk} = g.{G_pk} GROUP BY "
        "g.{G_name} ORDER BY SUM(v.{V_amt}) DESC LIMIT 1",
        tie_sql="SELECT SUM(v.{V_amt}) AS s " + _J_VE + " JOIN {G} AS g ON e.{E_fk} = g.{G_pk} "
        "GROUP BY g.{G_name} ORDER BY s DESC",
        limit="1",
    ),
    T(
        "oths_with_ent",
        "hard",
        (
            "Which {oths} had {evts} for the {ent} {entv}?",
            "List the {oths} with at least one {evt} of {entv}.",
        ),
        "SELECT DISTINCT o.{O_name} " + _J_VO + " JOIN {E} AS e ON v.{V_E} = e.{E_pk} WHERE "
        "e.{E_name} = {entv}",
        filter_of="O",
    ),
    T(
        "ents_none_year",
        "hard",
        (
            "Which {ents} had no {evts} in {year}?",
            "List the {ents} without any {evts} during {year}.",
        ),
        "SELECT {E_name} FROM {E} WHERE {E_pk} NOT IN (SELECT {V_E} FROM {V} WHERE "
        + _YEAR
        + " = {year})",
        filter_of="E",
    ),
    T(
        "avg_amt_city_year",
        "hard",
        (
            ("What is the average {amt} per city of the {oths} in {year}?"),
            ("For {year}, show the mean {amt} of {evts} by city of the {oth}."),
        ),
        "SELECT o.{O_city}, AVG(v.{V_amt}) " + _J_VO + " WHERE " + _VYEAR + " = {year} "
        "GROUP BY o.{O_city}",
    ),
    T(
        "top_n_oths_amt",
        "hard",
        (
            "Who are the {n} {oths} with the highest total {amt}?",
            "List the top {n} {oths} by total {amt}.",
        ),
        "SELECT o.{O_name} " + _J_VO + " GROUP BY o.{O_name} ORDER BY SUM(v.{V_amt}) DESC "
        "LIMIT {n}",
        tie_sql="SELECT SUM(v.{V_amt}) AS s " + _J_VO + " GROUP BY o.{O_name} ORDER BY s DESC",
        limit="n",
    ),
    T(
        "grp_best_avg",
        "hard",
        (
            "Which {grp} has the highest average {num} of its {ents}?",
            "Name the {grp} whose {ents} have the largest mean {num}.",
        ),
        "SELECT g.{G_name} " + _J_EG + " GROUP BY g.{G_name} ORDER BY AVG(e.{E_num}) DESC LIMIT 1",
        tie_sql="SELECT AVG(e.{E_num}) AS a " + _J_EG + " GROUP BY g.{G_name} ORDER BY a DESC",
        limit="1",
    ),
    T(
        "grps_avg_above",
        "hard",
        (
            "Which {grps} have an average {ent} {num} above {numv}?",
            ("List the {grps} whose {ents} average more than {numv} in {num}."),
        ),
        "SELECT g.{G_name} " + _J_EG + " GROUP BY g.{G_name} HAVING AVG(e.{E_num}) > {numv}",
        filter_of="G",
    ),
    T(
        "oths_above_avg_evts",
        "hard",
        (
            ("Which {oths} have more {evts} than the average {oth} with {evts}?"),
            ("List the {oths} whose number of {evts} is above the average per {oth}."),
        ),
        "SELECT o.{O_name} " + _J_VO + " GROUP BY o.{O_name} HAVING COUNT(*) > (SELECT "
        "COUNT(*) / COUNT(DISTINCT {V_O}) FROM {V})",
        filter_of="O",
    ),
)
del T


def template(template_id: str) -> Template:
    """The template with this id (KeyError when unknown)."""
    for t in TEMPLATES:
        if t.template_id == template_id:
            return t
    raise KeyError(template_id)
