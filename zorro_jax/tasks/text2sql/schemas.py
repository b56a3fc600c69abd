"""Database schemas of the built-in text-to-SQL benchmark, with seeded data generators.

Every schema plays the same four roles so that one set of question templates serves all of them
(and a held-out schema tests transfer to unseen table and column names):

  G  a grouping table            (e.g. categories)   name, a categorical attribute
  E  an entity table, FK -> G    (e.g. products)     name, a numeric measure
  O  an actor table              (e.g. customers)    name, city, a year
  V  an event table, FK -> E, O  (e.g. orders)       date, a numeric amount

plus schema-specific extra tables (suppliers, instructors, ...) that make the schemas realistic
and that prompts must show. Data come from `random.Random(seed)` only, so a rebuild is identical.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import random

CITIES = ("Lisbon", "Porto", "Madrid", "Lyon", "Turin", "Ghent", "Krakow", "Bergen", "Graz",
    "Malmo")
FIRST = ("Ana", "Ben", "Carla", "Dev", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira",
    "Luis", "Maya", "Nils", "Olga", "Pablo", "Rosa", "Sven", "Tara", "Omar", "Vera", "Yusuf",
    "Zoe", "Ivan")
LAST = ("Silva", "Moreau", "Rossi", "Novak", "Berg", "Costa", "Weber", "Jansen", "Kowal", "Lind",
    "Marin", "Haas", "Ortiz", "Peeters", "Sousa", "Dahl")
ADJECTIVES = ("Swift", "Golden", "Silent", "Bright", "Hidden", "Northern", "Crimson", "Gentle",
    "Rapid", "Ancient", "Clever", "Lucky")


@dataclasses.dataclass(frozen=True)
class SchemaSpec:
    """A benchmark database: DDL, template roles, natural-language words and data recipe."""

    db_id: str
    ddl: tuple[str, ...]
    # Role name -> SQL identifier, e.g. {"E": "products", "E_num": "price", ...}.
    roles: dict
    # Word name -> English, e.g. {"ents": "products", "num": "price", ...}.
    words: dict
    seed: int
    group_names: tuple[str, ...]
    group_attrs: tuple[str, ...]
    entity_nouns: tuple[str, ...]
    n_entities: int
    n_actors: int
    n_events: int
    # (low, high, decimals) of the entity measure and of the event amount.
    num_range: tuple[int, int, int]
    amt_range: tuple[int, int, int]
    year_range: tuple[int, int]


# fmt: off
_ROLE_KEYS = ("G", "G_pk", "G_name", "G_attr", "E", "E_pk", "E_name", "E_fk", "E_num", "O",
              "O_pk", "O_name", "O_city", "O_year", "V", "V_pk", "V_E", "V_O", "V_date", "V_amt")
_WORD_KEYS = ("grp", "grps", "gattr", "ent", "ents", "num", "oth", "oths", "oyear", "evt",
              "evts", "amt")
# fmt: on


def _spec(**kw) -> SchemaSpec:
    spec = SchemaSpec(**kw)
    missing = [k for k in _ROLE_KEYS if k not in spec.roles] + [
        k for k in _WORD_KEYS if k not in spec.words
    ]
    if missing:
        raise ValueError(f"{spec.db_id}: missing roles/words {missing}")
    return spec


RETAIL = _spec(
    db_id="retail",
    ddl=(
        "CREATE TABLE categories (category_id INTEGER PRIMARY KEY, name VARCHAR, aisle VARCHAR)",
        (
            "CREATE TABLE products (product_id INTEGER PRIMARY KEY, name VARCHAR, category_id "
            "INTEGER REFERENCES categories(category_id), price DECIMAL(8,2), stock INTEGER)"
        ),
        (
            "CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name VARCHAR, city VARCHAR, "
            "signup_year INTEGER)"
        ),
        (
            "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, product_id INTEGER REFERENCES "
            "products(product_id), customer_id INTEGER REFERENCES customers(customer_id), "
            "order_date DATE, total DECIMAL(10,2))"
        ),
        "CREATE TABLE suppliers (supplier_id INTEGER PRIMARY KEY, name VARCHAR, country VARCHAR)",
        (
            "CREATE TABLE product_suppliers (product_id INTEGER REFERENCES products(product_id), "
            "supplier_id INTEGER REFERENCES suppliers(supplier_id), PRIMARY KEY (product_id, "
            "supplier_id))"
        ),
    ),
    roles={"G": "categories", "G_pk": "category_id", "G_name": "name", "G_attr": "aisle",
        "E": "products", "E_pk": "product_id", "E_name": "name", "E_fk": "category_id",
        "E_num": "price", "O": "customers", "O_pk": "customer_id", "O_name": "name",
        "O_city": "city", "O_year": "signup_year", "V": "orders", "V_pk": "order_id",
        "V_E": "product_id", "V_O": "customer_id", "V_date": "order_date", "V_amt": "total"},
    words={"grp": "category", "grps": "categories", "gattr": "aisle", "ent": "product",
        "ents": "products", "num": "price", "oth": "customer", "oths": "customers",
        "oyear": "signed up", "evt": "order", "evts": "orders", "amt": "order total"},
    seed=11,
    group_names=("Electronics", "Garden", "Toys", "Kitchen", "Sports", "Books"),
    group_attrs=("North", "South", "East"),
    entity_nouns=("Lamp", "Kettle", "Drone", "Racket", "Shovel", "Puzzle", "Blender", "Novel"),
    n_entities=40,
    n_actors=60,
    n_events=300,
    num_range=(5, 400, 2),
    amt_range=(10, 900, 2),
    year_range=(2015, 2023),
)

UNIVERSITY = _spec(
    db_id="university",
    ddl=(
        (
            "CREATE TABLE departments (dept_id INTEGER PRIMARY KEY, dept_name VARCHAR, "
            "building VARCHAR)"
        ),
        (
            "CREATE TABLE courses (course_id INTEGER PRIMARY KEY, title VARCHAR, dept_id INTEGER "
            "REFERENCES departments(dept_id), capacity INTEGER)"
        ),
        (
            "CREATE TABLE students (student_id INTEGER PRIMARY KEY, student_name VARCHAR, "
            "home_city VARCHAR, admission_year INTEGER)"
        ),
        (
            "CREATE TABLE enrollments (enrollment_id INTEGER PRIMARY KEY, course_id INTEGER "
            "REFERENCES courses(course_id), student_id INTEGER REFERENCES students(student_id), "
            "enrolled_on DATE, score DOUBLE)"
        ),
        (
            "CREATE TABLE instructors (instructor_id INTEGER PRIMARY KEY, name VARCHAR, dept_id "
            "INTEGER REFERENCES departments(dept_id), salary INTEGER)"
        ),
    ),
    roles={"G": "departments", "G_pk": "dept_id", "G_name": "dept_name", "G_attr": "building",
        "E": "courses", "E_pk": "course_id", "E_name": "title", "E_fk": "dept_id",
        "E_num": "capacity", "O": "students", "O_pk": "student_id", "O_name": "student_name",
        "O_city": "home_city", "O_year": "admission_year", "V": "enrollments",
        "V_pk": "enrollment_id", "V_E": "course_id", "V_O": "student_id", "V_date": "enrolled_on",
        "V_amt": "score"},
    words={"grp": "department", "grps": "departments", "gattr": "building", "ent": "course",
        "ents": "courses", "num": "capacity", "oth": "student", "oths": "students",
        "oyear": "were admitted", "evt": "enrollment", "evts": "enrollments", "amt": "score"},
    seed=22,
    group_names=("Physics", "History", "Biology", "Economics", "Mathematics", "Music", "Law"),
    group_attrs=("Main Hall", "Science Wing", "Old Campus"),
    entity_nouns=("Seminar", "Lab", "Studio", "Workshop", "Lecture", "Colloquium"),
    n_entities=35,
    n_actors=70,
    n_events=320,
    num_range=(15, 240, 0),
    amt_range=(40, 100, 1),
    year_range=(2016, 2023),
)

LIBRARY = _spec(
    db_id="library",
    ddl=(
        (
            "CREATE TABLE publishers (publisher_id INTEGER PRIMARY KEY, name VARCHAR, country "
            "VARCHAR)"
        ),
        (
            "CREATE TABLE books (book_id INTEGER PRIMARY KEY, title VARCHAR, publisher_id INTEGER "
            "REFERENCES publishers(publisher_id), pages INTEGER)"
        ),
        (
            "CREATE TABLE members (member_id INTEGER PRIMARY KEY, name VARCHAR, city VARCHAR, "
            "join_year INTEGER)"
        ),
        (
            "CREATE TABLE loans (loan_id INTEGER PRIMARY KEY, book_id INTEGER REFERENCES "
            "books(book_id), member_id INTEGER REFERENCES members(member_id), loan_date DATE, "
            "late_fee DECIMAL(6,2))"
        ),
        "CREATE TABLE authors (author_id INTEGER PRIMARY KEY, name VARCHAR, birth_year INTEGER)",
        (
            "CREATE TABLE book_authors (book_id INTEGER REFERENCES books(book_id), "
            "author_id INTEGER "
            "REFERENCES authors(author_id), PRIMARY KEY (book_id, author_id))"
        ),
    ),
    roles={"G": "publishers", "G_pk": "publisher_id", "G_name": "name", "G_attr": "country",
        "E": "books", "E_pk": "book_id", "E_name": "title", "E_fk": "publisher_id",
        "E_num": "pages", "O": "members", "O_pk": "member_id", "O_name": "name", "O_city": "city",
        "O_year": "join_year", "V": "loans", "V_pk": "loan_id", "V_E": "book_id",
        "V_O": "member_id", "V_date": "loan_date", "V_amt": "late_fee"},
    words={"grp": "publisher", "grps": "publishers", "gattr": "country", "ent": "book",
        "ents": "books", "num": "page count", "oth": "member", "oths": "members",
        "oyear": "joined", "evt": "loan", "evts": "loans", "amt": "late fee"},
    seed=33,
    group_names=("Penguin House", "Blue Owl", "Northwind Press", "Harbor Books", "Atlas Media"),
    group_attrs=("Spain", "Norway", "Italy"),
    entity_nouns=("Garden", "River", "Empire", "Winter", "Voyage", "Secret", "Mirror"),
    n_entities=45,
    n_actors=55,
    n_events=280,
    num_range=(90, 900, 0),
    amt_range=(0, 30, 2),
    year_range=(2012, 2023),
)

CLINIC = _spec(
    db_id="clinic",
    ddl=(
        "CREATE TABLE specialties (specialty_id INTEGER PRIMARY KEY, name VARCHAR, wing VARCHAR)",
        (
            "CREATE TABLE doctors (doctor_id INTEGER PRIMARY KEY, name VARCHAR, specialty_id "
            "INTEGER REFERENCES specialties(specialty_id), years_experience INTEGER)"
        ),
        (
            "CREATE TABLE patients (patient_id INTEGER PRIMARY KEY, name VARCHAR, city VARCHAR, "
            "birth_year INTEGER)"
        ),
        (
            "CREATE TABLE appointments (appointment_id INTEGER PRIMARY KEY, doctor_id INTEGER "
            "REFERENCES doctors(doctor_id), patient_id INTEGER REFERENCES patients(patient_id), "
            "visit_date DATE, fee DECIMAL(8,2))"
        ),
        (
            "CREATE TABLE prescriptions (prescription_id INTEGER PRIMARY KEY, "
            "appointment_id INTEGER "
            "REFERENCES appointments(appointment_id), drug VARCHAR, dose_mg INTEGER)"
        ),
    ),
    roles={"G": "specialties", "G_pk": "specialty_id", "G_name": "name", "G_attr": "wing",
        "E": "doctors", "E_pk": "doctor_id", "E_name": "name", "E_fk": "specialty_id",
        "E_num": "years_experience", "O": "patients", "O_pk": "patient_id", "O_name": "name",
        "O_city": "city", "O_year": "birth_year", "V": "appointments", "V_pk": "appointment_id",
        "V_E": "doctor_id", "V_O": "patient_id", "V_date": "visit_date", "V_amt": "fee"},
    words={"grp": "specialty", "grps": "specialties", "gattr": "wing", "ent": "doctor",
        "ents": "doctors", "num": "years of experience", "oth": "patient", "oths": "patients",
        "oyear": "were born", "evt": "appointment", "evts": "appointments", "amt": "fee"},
    seed=44,
    group_names=("Cardiology", "Dermatology", "Neurology", "Pediatrics", "Oncology"),
    group_attrs=("A", "B", "C"),
    entity_nouns=(),
    n_entities=30,
    n_actors=80,
    n_events=350,
    num_range=(1, 38, 0),
    amt_range=(30, 400, 2),
    year_range=(1950, 2015),
)

AIRLINE = _spec(
    db_id="airline",
    ddl=(
        "CREATE TABLE airlines (airline_id INTEGER PRIMARY KEY, name VARCHAR, country VARCHAR)",
        (
            "CREATE TABLE aircraft (aircraft_id INTEGER PRIMARY KEY, model VARCHAR, airline_id "
            "INTEGER REFERENCES airlines(airline_id), seats INTEGER)"
        ),
        (
            "CREATE TABLE passengers (passenger_id INTEGER PRIMARY KEY, name VARCHAR, "
            "city VARCHAR, "
            "member_since INTEGER)"
        ),
        (
            "CREATE TABLE tickets (ticket_id INTEGER PRIMARY KEY, aircraft_id INTEGER REFERENCES "
            "aircraft(aircraft_id), passenger_id INTEGER REFERENCES passengers(passenger_id), "
            "flight_date DATE, price DECIMAL(8,2))"
        ),
        "CREATE TABLE airports (code VARCHAR PRIMARY KEY, city VARCHAR, country VARCHAR)",
    ),
    roles={"G": "airlines", "G_pk": "airline_id", "G_name": "name", "G_attr": "country",
        "E": "aircraft", "E_pk": "aircraft_id", "E_name": "model", "E_fk": "airline_id",
        "E_num": "seats", "O": "passengers", "O_pk": "passenger_id", "O_name": "name",
        "O_city": "city", "O_year": "member_since", "V": "tickets", "V_pk": "ticket_id",
        "V_E": "aircraft_id", "V_O": "passenger_id", "V_date": "flight_date", "V_amt": "price"},
    words={"grp": "airline", "grps": "airlines", "gattr": "country", "ent": "aircraft",
        "ents": "aircraft", "num": "seat count", "oth": "passenger", "oths": "passengers",
        "oyear": "became members", "evt": "ticket", "evts": "tickets", "amt": "ticket price"},
    seed=55,
    group_names=("SkyBridge", "Aurora Air", "Meridian", "Polar Wings", "Tagus Air"),
    group_attrs=("Portugal", "Finland", "Austria"),
    entity_nouns=("A320", "A321", "B737", "E190", "ATR72", "A330", "B787"),
    n_entities=32,
    n_actors=65,
    n_events=300,
    num_range=(70, 330, 0),
    amt_range=(40, 1200, 2),
    year_range=(2010, 2023),
)

# Held out: only in the test split, with names the policy never saw in training.
HR = _spec(
    db_id="hr",
    ddl=(
        "CREATE TABLE divisions (division_id INTEGER PRIMARY KEY, title VARCHAR, site VARCHAR)",
        (
            "CREATE TABLE projects (project_id INTEGER PRIMARY KEY, project_name VARCHAR, "
            "division_id INTEGER REFERENCES divisions(division_id), budget INTEGER)"
        ),
        (
            "CREATE TABLE employees (employee_id INTEGER PRIMARY KEY, full_name VARCHAR, "
            "office_city VARCHAR, hire_year INTEGER)"
        ),
        (
            "CREATE TABLE timesheets (entry_id INTEGER PRIMARY KEY, project_id INTEGER REFERENCES "
            "projects(project_id), employee_id INTEGER REFERENCES employees(employee_id), "
            "work_date DATE, hours DOUBLE)"
        ),
        (
            "CREATE TABLE skills (employee_id INTEGER REFERENCES employees(employee_id), skill "
            "VARCHAR, level INTEGER, PRIMARY KEY (employee_id, skill))"
        ),
    ),
    roles={"G": "divisions", "G_pk": "division_id", "G_name": "title", "G_attr": "site",
        "E": "projects", "E_pk": "project_id", "E_name": "project_name", "E_fk": "division_id",
        "E_num": "budget", "O": "employees", "O_pk": "employee_id", "O_name": "full_name",
        "O_city": "office_city", "O_year": "hire_year", "V": "timesheets", "V_pk": "entry_id",
        "V_E": "project_id", "V_O": "employee_id", "V_date": "work_date", "V_amt": "hours"},
    words={"grp": "division", "grps": "divisions", "gattr": "site", "ent": "project",
        "ents": "projects", "num": "budget", "oth": "employee", "oths": "employees",
        "oyear": "were hired", "evt": "timesheet entry", "evts": "timesheet entries",
        "amt": "hours"},
    seed=66,
    group_names=("Research", "Operations", "Finance", "Marketing", "Platform"),
    group_attrs=("Campus 1", "Campus 2"),
    entity_nouns=("Falcon", "Orion", "Atlas", "Nimbus", "Quartz", "Helix", "Vega"),
    n_entities=30,
    n_actors=60,
    n_events=320,
    num_range=(20000, 900000, 0),
    amt_range=(1, 12, 1),
    year_range=(2008, 2023),
)

SCHEMAS: tuple[SchemaSpec, ...] = (RETAIL, UNIVERSITY, LIBRARY, CLINIC, AIRLINE, HR)
HELD_OUT = "hr"


def _number(rng: random.Random, low: int, high: int, decimals: int):
    if decimals == 0:
        return rng.randint(low, high)
    value = round(rng.uniform(low, high), decimals)
    return decimal.Decimal(f"{value:.{decimals}f}") if decimals == 2 else value


def _people(rng: random.Random, n: int) -> list[str]:
    names = [f"{f} {s}" for f in FIRST for s in LAST]
    return rng.sample(names, n)


def _entity_names(spec: SchemaSpec, rng: random.Random) -> list[str]:
    if not spec.entity_nouns:  # doctors are people
        return [f"Dr. {name}" for name in _people(rng, spec.n_entities)]
    names = [f"{a} {n}" for a in ADJECTIVES for n in spec.entity_nouns]
    return rng.sample(names, spec.n_entities)


def generate_rows(spec: SchemaSpec) -> dict[str, list[tuple]]:
    """Rows of every table, deterministic in `spec.seed`."""
    rng = random.Random(spec.seed)
    r = spec.roles
    n_g = len(spec.group_names)
    rows: dict[str, list[tuple]] = {}
    rows[r["G"]] = [
        (i + 1, name, rng.choice(spec.group_attrs)) for i, name in enumerate(spec.group_names)
    ]
    ent_names = _entity_names(spec, rng)
    rows[r["E"]] = []
    for i, name in enumerate(ent_names):
        row = (i + 1, name, rng.randint(1, n_g), _number(rng, *spec.num_range))
        if spec.db_id == "retail":
            row = row + (rng.randint(0, 500),)
        rows[r["E"]].append(row)
    # Skewed city weights so "which city has the most ..." has a unique answer.
    weights = [len(CITIES) - i for i in range(len(CITIES))]
    rows[r["O"]] = [
        (i + 1, name, rng.choices(CITIES, weights)[0], rng.randint(*spec.year_range))
        for i, name in enumerate(_people(rng, spec.n_actors))
    ]
    # Some entities and actors never appear in events, for the NOT IN questions.
    active_e = rng.sample(range(1, spec.n_entities + 1), int(spec.n_entities * 0.85))
    active_o = rng.sample(range(1, spec.n_actors + 1), int(spec.n_actors * 0.8))
    start = datetime.date(2019, 1, 1)
    rows[r["V"]] = [
        (
            i + 1,
            rng.choice(active_e),
            rng.choice(active_o),
            start + datetime.timedelta(days=rng.randint(0, 5 * 365 - 1)),
            _number(rng, *spec.amt_range),
        )
        for i in range(spec.n_events)
    ]
    rows.update(_extra_rows(spec, rng, rows))
    return rows


def _extra_rows(spec: SchemaSpec, rng: random.Random, rows) -> dict[str, list[tuple]]:
    n_e = spec.n_entities
    if spec.db_id == "retail":
        sup = [
            (i + 1, f"{rng.choice(LAST)} {s}", rng.choice(("Spain", "China", "Germany")))
            for i, s in enumerate(("Trading", "Supply", "Goods", "Imports", "Wholesale"))
        ]
        pairs = sorted({(rng.randint(1, n_e), rng.randint(1, 5)) for _ in range(60)})
        return {"suppliers": sup, "product_suppliers": pairs}
    if spec.db_id == "university":
        return {
            "instructors": [
                (i + 1, name, rng.randint(1, len(spec.group_names)), rng.randint(40, 120) * 1000)
                for i, name in enumerate(_people(rng, 20))
            ]
        }
    if spec.db_id == "library":
        authors = [
            (i + 1, name, rng.randint(1920, 1990)) for i, name in enumerate(_people(rng, 25))
        ]
        pairs = sorted(
            {(b, rng.randint(1, 25)) for b in range(1, n_e + 1)}
            | {(rng.randint(1, n_e), rng.randint(1, 25)) for _ in range(15)}
        )
        return {"authors": authors, "book_authors": pairs}
    if spec.db_id == "clinic":
        drugs = ("Ibuprofen", "Amoxicillin", "Metformin", "Lisinopril", "Atorvastatin")
        n_v = len(rows["appointments"])
        return {
            "prescriptions": [
                (i + 1, rng.randint(1, n_v), rng.choice(drugs), rng.choice((50, 100, 250, 500)))
                for i in range(150)
            ]
        }
    if spec.db_id == "airline":
        airports = [
            ("LIS", "Lisbon", "Portugal"),
            ("OPO", "Porto", "Portugal"),
            ("HEL", "Helsinki", "Finland"),
            ("VIE", "Vienna", "Austria"),
            ("GRZ", "Graz", "Austria"),
            ("TMP", "Tampere", "Finland"),
        ]
        return {"airports": airports}
    if spec.db_id == "hr":
        skills = ("SQL", "Python", "Design", "Negotiation", "Statistics")
        pairs = sorted({(rng.randint(1, spec.n_actors), rng.choice(skills)) for _ in range(90)})
        return {"skills": [(e, s, rng.randint(1, 5)) for e, s in pairs]}
    return {}


def schema(db_id: str) -> SchemaSpec:
    """The built-in schema with this db_id (KeyError when unknown)."""
    for spec in SCHEMAS:
        if spec.db_id == db_id:
            return spec
    raise KeyError(f"unknown built-in schema {db_id!r}")
