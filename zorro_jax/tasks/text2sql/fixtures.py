"""Small, deterministic data sets in the layouts Spider and BIRD ship, for tests and examples.

`write_spider_fixture`: one database and a handful of questions (the fix-ups of transpile.py).
`write_affinity_fixture`: three databases declared the way Spider's are (numbers in TEXT
columns, an INTEGER key matched against a TEXT key, a few non-numeric strings among numbers) and
about a hundred gold queries in Spider's style, to measure SQLite-vs-DuckDB agreement.
`write_spider_release` / `write_bird_release`: the same databases laid out as the Spider and
BIRD downloads are (`train_others.json`; `dev_databases/` and `dev_tables.json`).
"""

from __future__ import annotations

import json
import os
import sqlite3

_CAR_SHOP = """
CREATE TABLE countries (countryid INTEGER PRIMARY KEY, countryname TEXT, continent INTEGER);
CREATE TABLE car_makers (id INTEGER PRIMARY KEY, maker TEXT, fullname TEXT,
                         country TEXT REFERENCES countries(countryid));
CREATE TABLE model_list (modelid INTEGER PRIMARY KEY, maker INTEGER REFERENCES car_makers(id),
                         model TEXT UNIQUE);
CREATE TABLE car_names (makeid INTEGER PRIMARY KEY, model TEXT REFERENCES model_list(model),
                        make TEXT);
CREATE TABLE cars_data (id INTEGER PRIMARY KEY REFERENCES car_names(makeid), mpg TEXT,
                        cylinders INTEGER, edispl REAL, horsepower TEXT, weight INTEGER,
                        accelerate REAL, year INTEGER);
INSERT INTO countries VALUES (1, 'usa', 1), (2, 'germany', 2), (3, 'france', 2), (4, 'japan', 3),
    (5, 'italy', 2), (10, 'korea', 3), (11, 'sweden', 2);
INSERT INTO car_makers VALUES (1, 'amc', 'American Motor Company', '1'),
    (2, 'volkswagen', 'Volkswagen', '2'), (3, 'bmw', 'BMW', '2'), (4, 'gm', 'General Motors', '1'),
    (5, 'ford', 'Ford Motor Company', '1'), (6, 'toyota', 'Toyota', '4'), (7, 'fiat', 'Fiat', '5'),
    (8, 'hyundai', 'Hyundai', '10'), (9, 'peugeot', 'Peugeot', '3');
INSERT INTO model_list VALUES (1, 1, 'amc'), (2, 2, 'volkswagen'), (3, 3, 'bmw'),
    (4, 4, 'chevrolet'), (5, 4, 'buick'), (6, 5, 'ford'), (7, 6, 'toyota'), (8, 7, 'fiat'),
    (9, 8, 'hyundai'), (10, 9, 'peugeot');
INSERT INTO car_names VALUES (1, 'chevrolet', 'chevrolet chevelle malibu'),
    (2, 'buick', 'buick skylark 320'), (3, 'amc', 'amc rebel sst'), (4, 'ford', 'ford torino'),
    (5, 'ford', 'ford galaxie 500'), (6, 'toyota', 'toyota corona'), (7, 'volkswagen', 'vw 411'),
    (8, 'bmw', 'bmw 2002'), (9, 'fiat', 'fiat 124b'), (10, 'toyota', 'toyota corolla'),
    (11, 'hyundai', 'hyundai pony'), (12, 'peugeot', 'peugeot 504');
INSERT INTO cars_data VALUES
    (1, '18', 8, 307.0, '130', 3504, 12.0, 1970), (2, '15', 8, 350.0, '165', 3693, 11.5, 1970),
    (3, '31.5', 4, 98.0, '88', 2045, 18.5, 1977), (4, '26', 4, 97.0, '95', 2234, 15.5, 1972),
    (5, '9', 8, 304.0, 'null', 4732, 18.5, 1971), (6, '22.25', 6, 199.0, '110', 2700, 15.0, 1974),
    (7, '18', 4, 121.0, '150', 2933, 12.5, 1973), (8, '30', 4, 79.0, '67', 1950, 19.0, 1974),
    (9, '27.2', 4, 119.0, '225', 3000, 16.0, 1980), (10, '13', 8, 400.0, '97', 4464, 11.5, 1982),
    (11, '44', 4, 97.0, '52', 2130, 24.6, 1982), (12, '16.5', 6, 168.0, '150', 3820, 16.7, 1977);
"""

_CONCERT_SINGER = """
CREATE TABLE stadium (stadium_id INTEGER PRIMARY KEY, location TEXT, name TEXT,
                      capacity INTEGER, highest INTEGER, lowest INTEGER, average INTEGER);
CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, song_name TEXT,
                     song_release_year TEXT, age INTEGER, is_male BOOL);
CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, concert_name TEXT, theme TEXT,
                      stadium_id TEXT REFERENCES stadium(stadium_id), year TEXT);
CREATE TABLE singer_in_concert (concert_id INTEGER REFERENCES concert(concert_id),
                                singer_id TEXT REFERENCES singer(singer_id));
INSERT INTO stadium VALUES (1, 'Harbour Row', 'North Quay Park', 10104, 4812, 1294, 2106),
    (2, 'Mill Lane', 'Weaver Park', 11998, 2363, 1057, 1477),
    (3, 'East Bank', 'Bayview Stadium', 2000, 1980, 533, 864),
    (4, 'Queens Road', 'Hampton Park', 52500, 1763, 466, 730),
    (5, 'Castle Hill', 'Forthside Stadium', 3808, 1125, 404, 642),
    (7, 'Old Town', 'Recreation Park', 3100, 1057, 331, 637),
    (9, 'Pier Head', 'Balmore', 4000, 837, 400, 615),
    (10, 'Glen End', 'Glebe Park', 3960, 780, 315, 552);
INSERT INTO singer VALUES (1, 'Joe Sharp', 'Netherlands', 'You', '1992', 52, 'F'),
    (2, 'Timbaland', 'United States', 'Dangerous', '2008', 32, 'T'),
    (3, 'Justin Brown', 'France', 'Hey Oh', '2013', 29, 'T'),
    (4, 'Rose White', 'France', 'Sun', '2003', 41, 'F'),
    (5, 'John Nizinik', 'France', 'Gentleman', '2014', 43, 'T'),
    (6, 'Tribal King', 'France', 'Love', '2016', 25, 'T'),
    (7, 'Ana Lua', 'Portugal', 'Hey Now', '1999', 36, 'F');
INSERT INTO concert VALUES (1, 'Auditions', 'Free choice', '1', '2014'),
    (2, 'Super bootcamp', 'Free choice 2', '2', '2014'),
    (3, 'Home Visits', 'Bleeding Love', '2', '2015'), (4, 'Week 1', 'Wide Awake', '10', '2014'),
    (5, 'Week 1', 'Happy Tonight', '9', '2015'), (6, 'Week 2', 'Party All Night', '7', '2016'),
    (7, 'Finale', 'Closing', '2', '2016');
INSERT INTO singer_in_concert VALUES (1, '2'), (1, '3'), (1, '5'), (2, '3'), (2, '6'), (3, '5'),
    (4, '4'), (5, '6'), (5, '3'), (6, '2'), (7, 'guest'), (7, '10');
"""

_HR = """
CREATE TABLE dept (dept_id TEXT PRIMARY KEY, dname TEXT, budget NUMERIC);
CREATE TABLE employee (id INTEGER PRIMARY KEY, name TEXT, salary INTEGER,
                       dept_id INTEGER REFERENCES dept(dept_id), hired TEXT, rating REAL);
INSERT INTO dept VALUES ('1', 'Research', 120000), ('2', 'Sales', 80000.5), ('3', 'Support', ''),
    ('HQ', 'Board', 500000), ('12', 'Legal', 95000);
INSERT INTO employee VALUES (1, 'Ada', 91000, 1, '2019-04-02', 4.5),
    (2, 'Ben', 48000, 2, '2020-01-15', 3.0), (3, 'Cleo', '', 2, '2018-11-30', NULL),
    (4, 'Dev', 7500, 3, '2021-06-01', 2.5), (5, 'Eve', 'n/a', 1, '2019-09-09', 5.0),
    (6, 'Finn', 62000, 12, '2017-03-03', 4.0), (7, 'Gus', 55000, NULL, '2019-12-24', 3.5),
    (8, 'Hana', 120000, 1, '2016-02-29', 4.9);
"""

# (db_id, question, gold SQL in SQLite dialect, Spider hardness)
_AFFINITY_GOLDS = [
    ("car_shop", "Cars with more than 150 horsepower?",
     "SELECT count(*) FROM cars_data WHERE horsepower > 150", "easy"),
    ("car_shop", "Average mpg of 4-cylinder cars?",
     "SELECT avg(mpg) FROM cars_data WHERE cylinders = 4", "easy"),
    ("car_shop", "Largest horsepower?", "SELECT max(horsepower) FROM cars_data", "easy"),
    ("car_shop", "Largest mpg?", "SELECT max(mpg) FROM cars_data", "easy"),
    ("car_shop", "Smallest mpg?", "SELECT min(mpg) FROM cars_data", "easy"),
    ("car_shop", "Makers from the usa?",
     ("SELECT T1.maker FROM car_makers AS T1 JOIN countries AS T2 ON T1.country = T2.countryid "
     "WHERE T2.countryname = 'usa'"), "medium"),
    ("car_shop", "Countries without a car maker?",
     "SELECT countryname FROM countries WHERE countryid NOT IN (SELECT country FROM car_makers)",
     "hard"),
    ("car_shop", "Cars accelerating faster than the most powerful car?",
     ("SELECT count(*) FROM cars_data WHERE accelerate > (SELECT accelerate FROM cars_data "
     "ORDER BY horsepower DESC LIMIT 1)"), "hard"),
    ("car_shop", "Average horsepower before 1980?",
     "SELECT avg(horsepower) FROM cars_data WHERE year < 1980", "easy"),
    ("car_shop", "Ids of the three cars with the highest mpg?",
     "SELECT id FROM cars_data ORDER BY mpg DESC LIMIT 3", "medium"),
    ("car_shop", "Best mpg per cylinder count?",
     "SELECT cylinders, max(mpg) FROM cars_data GROUP BY cylinders", "medium"),
    ("car_shop", "Model of the car with the best mpg?",
     ("SELECT T1.model FROM car_names AS T1 JOIN cars_data AS T2 ON T1.makeid = T2.id "
     "ORDER BY T2.mpg DESC LIMIT 1"), "hard"),
    ("car_shop", "Total mpg?", "SELECT sum(mpg) FROM cars_data", "easy"),
    ("car_shop", "Cars with mpg over 20?", "SELECT count(*) FROM cars_data WHERE mpg > 20",
     "easy"),
    ("car_shop", "Models of cars with more than 100 horsepower?",
     ("SELECT DISTINCT T1.model FROM car_names AS T1 JOIN cars_data AS T2 ON T1.makeid = T2.id "
     "WHERE T2.horsepower > 100"), "medium"),
    ("car_shop", "Lightest 8-cylinder car of 1970?",
     "SELECT min(weight) FROM cars_data WHERE cylinders = 8 AND year = 1970", "medium"),
    ("car_shop", "Countries with at least two makers?",
     ("SELECT T2.countryname, count(*) FROM car_makers AS T1 JOIN countries AS T2 ON "
     "T1.country = T2.countryid GROUP BY T1.country HAVING count(*) >= 2"), "hard"),
    ("car_shop", "Horsepower values starting with 1?",
     "SELECT horsepower FROM cars_data WHERE horsepower LIKE '1%'", "easy"),
    ("car_shop", "Mpg values ending in .5?",
     "SELECT mpg FROM cars_data WHERE mpg LIKE '%.5'", "easy"),
    ("car_shop", "Average displacement of cars with 150 horsepower?",
     "SELECT avg(edispl) FROM cars_data WHERE horsepower = 150", "easy"),
    ("car_shop", "Cars with 150 or 88 horsepower?",
     "SELECT count(*) FROM cars_data WHERE horsepower IN (150, 88)", "easy"),
    ("car_shop", "Average weight per year?",
     "SELECT year, avg(weight) FROM cars_data GROUP BY year", "medium"),
    ("car_shop", "Makers from continent 2?",
     ("SELECT T1.id, T1.maker FROM car_makers AS T1 WHERE T1.country IN "
     "(SELECT countryid FROM countries WHERE continent = 2)"), "medium"),
    ("car_shop", "Mpg plus one of car 3?", "SELECT mpg + 1 FROM cars_data WHERE id = 3",
     "easy"),
    ("car_shop", "Twice the horsepower of the first five cars?",
     "SELECT id, horsepower * 2 FROM cars_data WHERE id <= 5", "easy"),
    ("car_shop", "Mpg as an integer?", "SELECT id, CAST(mpg AS INTEGER) FROM cars_data",
     "easy"),
    ("car_shop", "Cars with horsepower between 100 and 200?",
     "SELECT id FROM cars_data WHERE horsepower BETWEEN 100 AND 200", "easy"),
    ("car_shop", "Five lowest horsepower values?",
     "SELECT id, horsepower FROM cars_data ORDER BY horsepower LIMIT 5", "medium"),
    ("car_shop", "Cars with more than 4 cylinders and mpg below 25?",
     "SELECT count(*) FROM cars_data WHERE cylinders > 4 AND mpg < 25", "easy"),
    ("car_shop", "Mpg of the newest car id?",
     "SELECT mpg FROM cars_data WHERE id = (SELECT max(id) FROM cars_data)", "medium"),
    ("car_shop", "Makers with more than one model?",
     ("SELECT T1.fullname, T1.id FROM car_makers AS T1 JOIN model_list AS T2 ON "
     "T1.id = T2.maker GROUP BY T1.id HAVING count(*) > 1"), "medium"),
    ("car_shop", "Makers of country 1?", "SELECT count(*) FROM car_makers WHERE country = 1",
     "easy"),
    ("car_shop", "Makers whose country code is above 2?",
     "SELECT maker FROM car_makers WHERE country > 2", "easy"),
    ("car_shop", "Largest country code of a maker?", "SELECT max(country) FROM car_makers",
     "easy"),
    ("car_shop", "Average country code?", "SELECT avg(country) FROM car_makers", "easy"),
    ("car_shop", "Cars with the best mpg?",
     "SELECT id FROM cars_data WHERE mpg = (SELECT max(mpg) FROM cars_data)", "hard"),
    ("car_shop", "Cars above the average horsepower?",
     "SELECT count(*) FROM cars_data WHERE horsepower > (SELECT avg(horsepower) FROM cars_data)",
     "hard"),
    ("car_shop", "Makers ordered by country code?",
     "SELECT maker, country FROM car_makers ORDER BY country, maker", "easy"),
    ("car_shop", "Mpg text of each car?", "SELECT id, mpg || ' mpg' FROM cars_data", "easy"),
    ("car_shop", "Length of the mpg text?", "SELECT id, length(mpg) FROM cars_data", "easy"),
    ("car_shop", "Cars with an mpg of 18?", "SELECT id FROM cars_data WHERE mpg = 18", "easy"),
    ("car_shop", "Cars with an mpg of '31.5'?",
     "SELECT id FROM cars_data WHERE mpg = '31.5'", "easy"),
    ("car_shop", "Cars with mpg 18.0, written as a real?",
     "SELECT id FROM cars_data WHERE mpg = 18.0", "easy"),
    ("car_shop", "Name and mpg of the car with the highest mpg?",
     ("SELECT T1.make, max(T2.mpg) FROM car_names AS T1 JOIN cars_data AS T2 ON "
     "T1.makeid = T2.id"), "hard"),
    ("car_shop", "Horsepower of cars with a known horsepower, sorted?",
     "SELECT horsepower FROM cars_data WHERE horsepower != 'null' ORDER BY horsepower DESC",
     "medium"),
    ("car_shop", "Models made in japan or korea?",
     ("SELECT T3.model FROM countries AS T1 JOIN car_makers AS T2 ON T1.countryid = T2.country "
     "JOIN model_list AS T3 ON T2.id = T3.maker WHERE T1.countryname IN ('japan', 'korea')"),
     "hard"),
    ("car_shop", "Heaviest car per cylinder count, with its mpg?",
     "SELECT cylinders, mpg, max(weight) FROM cars_data GROUP BY cylinders", "hard"),
    ("car_shop", "Years with a car over 200 horsepower?",
     "SELECT DISTINCT year FROM cars_data WHERE horsepower >= '200'", "medium"),
    ("car_shop", "Number of distinct mpg values?",
     "SELECT count(DISTINCT mpg) FROM cars_data", "easy"),
    ("car_shop", "Cars whose horsepower equals their id times ten?",
     "SELECT id FROM cars_data WHERE horsepower = id * 10", "medium"),
    ("concert_singer", "Concerts in 2014 or 2015?",
     "SELECT count(*) FROM concert WHERE year = 2014 OR year = 2015", "easy"),
    ("concert_singer", "Stadiums without concerts?",
     "SELECT name FROM stadium WHERE stadium_id NOT IN (SELECT stadium_id FROM concert)", "hard"),
    ("concert_singer", "Concerts per stadium?",
     ("SELECT T2.name, count(*) FROM concert AS T1 JOIN stadium AS T2 ON "
     "T1.stadium_id = T2.stadium_id GROUP BY T1.stadium_id"), "medium"),
    ("concert_singer", "Stadium with most concerts since 2014?",
     ("SELECT T2.name, T2.capacity FROM concert AS T1 JOIN stadium AS T2 ON "
     "T1.stadium_id = T2.stadium_id WHERE T1.year >= 2014 GROUP BY T2.stadium_id "
     "ORDER BY count(*) DESC LIMIT 1"), "extra"),
    ("concert_singer", "Year with most concerts?",
     "SELECT year FROM concert GROUP BY year ORDER BY count(*) DESC LIMIT 1", "hard"),
    ("concert_singer", "Songs of singers older than average?",
     "SELECT song_name FROM singer WHERE age > (SELECT avg(age) FROM singer)", "hard"),
    ("concert_singer", "Song and release year of the youngest singer?",
     "SELECT song_name, song_release_year FROM singer ORDER BY age LIMIT 1", "medium"),
    ("concert_singer", "Singers in 2014 concerts?",
     ("SELECT T2.name FROM singer_in_concert AS T1 JOIN singer AS T2 ON "
     "T1.singer_id = T2.singer_id JOIN concert AS T3 ON T1.concert_id = T3.concert_id "
     "WHERE T3.year = 2014"), "hard"),
    ("concert_singer", "Singers with 'Hey' in a song name?",
     "SELECT name, country FROM singer WHERE song_name LIKE '%Hey%'", "medium"),
    ("concert_singer", "Stadiums with concerts in both 2014 and 2015?",
     ("SELECT T2.name, T2.location FROM concert AS T1 JOIN stadium AS T2 ON "
     "T1.stadium_id = T2.stadium_id WHERE T1.year = 2014 INTERSECT SELECT T2.name, T2.location "
     "FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id = T2.stadium_id WHERE "
     "T1.year = 2015"), "extra"),
    ("concert_singer", "Concerts in the largest stadium?",
     ("SELECT count(*) FROM concert WHERE stadium_id = (SELECT stadium_id FROM stadium "
     "ORDER BY capacity DESC LIMIT 1)"), "hard"),
    ("concert_singer", "Singers with no concert?",
     "SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM singer_in_concert)",
     "hard"),
    ("concert_singer", "Latest and earliest release year?",
     "SELECT max(song_release_year), min(song_release_year) FROM singer", "medium"),
    ("concert_singer", "Distinct release years after 2000?",
     "SELECT count(DISTINCT song_release_year) FROM singer WHERE song_release_year > 2000",
     "medium"),
    ("concert_singer", "Average concert year?", "SELECT avg(year) FROM concert", "easy"),
    ("concert_singer", "Singers per concert?",
     ("SELECT T2.concert_name, T2.theme, count(*) FROM singer_in_concert AS T1 JOIN concert AS "
     "T2 ON T1.concert_id = T2.concert_id GROUP BY T2.concert_id"), "medium"),
    ("concert_singer", "Concerts with a singer over 40?",
     ("SELECT DISTINCT T2.concert_name FROM singer_in_concert AS T1 JOIN concert AS T2 ON "
     "T1.concert_id = T2.concert_id WHERE T1.singer_id IN (SELECT singer_id FROM singer "
     "WHERE age > 40)"), "extra"),
    ("concert_singer", "Concerts in stadium 1 or 2?",
     "SELECT concert_name FROM concert WHERE stadium_id IN (1, 2)", "easy"),
    ("concert_singer", "Capacity of stadiums with concerts after 2014?",
     ("SELECT capacity FROM stadium WHERE stadium_id IN (SELECT stadium_id FROM concert "
     "WHERE year > 2014)"), "hard"),
    ("concert_singer", "Average and largest capacity?",
     "SELECT avg(capacity), max(capacity) FROM stadium", "easy"),
    ("concert_singer", "Stadiums for 3000 to 11000 people?",
     "SELECT location, name FROM stadium WHERE capacity BETWEEN 3000 AND 11000", "medium"),
    ("concert_singer", "Stadiums above the average attendance?",
     "SELECT name FROM stadium WHERE average > (SELECT avg(average) FROM stadium)", "hard"),
    ("concert_singer", "Concerts after '2014'?",
     "SELECT concert_name FROM concert WHERE year > '2014'", "easy"),
    ("concert_singer", "Concerts in stadium '10'?",
     "SELECT concert_name FROM concert WHERE stadium_id = '10'", "easy"),
    ("concert_singer", "Concerts per year, latest first?",
     "SELECT year, count(*) FROM concert GROUP BY year ORDER BY year DESC", "medium"),
    ("concert_singer", "Female singers?", "SELECT name FROM singer WHERE is_male = 'F'", "easy"),
    ("concert_singer", "Singers by sex?",
     "SELECT is_male, count(*) FROM singer GROUP BY is_male", "medium"),
    ("concert_singer", "Concert stadium ids in text order?",
     "SELECT DISTINCT stadium_id FROM concert ORDER BY stadium_id", "easy"),
    ("concert_singer", "Stadium ids of concerts, largest first?",
     "SELECT concert_id, stadium_id FROM concert ORDER BY 2 DESC, 1", "medium"),
    ("concert_singer", "Singer ids listed for concerts, as text?",
     "SELECT DISTINCT singer_id FROM singer_in_concert ORDER BY singer_id", "easy"),
    ("concert_singer", "Concerts of singers older than 30?",
     ("SELECT T1.concert_id FROM singer_in_concert AS T1 JOIN singer AS T2 ON "
     "T1.singer_id = T2.singer_id WHERE T2.age > 30"), "medium"),
    ("concert_singer", "Singers in concerts of stadiums above capacity 4000?",
     ("SELECT DISTINCT T4.name FROM stadium AS T1 JOIN concert AS T2 ON "
     "T1.stadium_id = T2.stadium_id JOIN singer_in_concert AS T3 ON "
     "T2.concert_id = T3.concert_id JOIN singer AS T4 ON T3.singer_id = T4.singer_id "
     "WHERE T1.capacity > 4000"), "extra"),
    ("concert_singer", "Most recent concert year?", "SELECT max(year) FROM concert", "easy"),
    ("concert_singer", "Songs released in the 2010s?",
     "SELECT song_name FROM singer WHERE song_release_year LIKE '201%'", "medium"),
    ("concert_singer", "Names of singers and their age, oldest first?",
     "SELECT name, age FROM singer ORDER BY age DESC", "easy"),
    ("concert_singer", "Singers from France?",
     "SELECT count(*) FROM singer WHERE country = 'France'", "easy"),
    ("concert_singer", "Stadium names and locations with capacity above 5000?",
     "SELECT name, location FROM stadium WHERE capacity > 5000", "easy"),
    ("concert_singer", "Concerts per theme in 2015?",
     "SELECT theme, count(*) FROM concert WHERE year = '2015' GROUP BY theme", "medium"),
    ("concert_singer", "Stadium of each concert, by concert name?",
     ("SELECT T1.concert_name, T2.name FROM concert AS T1 LEFT JOIN stadium AS T2 ON "
     "T1.stadium_id = T2.stadium_id ORDER BY T1.concert_name, T2.name"), "medium"),
    ("hr", "Employees earning over 50000?",
     "SELECT name FROM employee WHERE salary > 50000", "easy"),
    ("hr", "Average salary?", "SELECT avg(salary) FROM employee", "easy"),
    ("hr", "Highest and lowest salary?", "SELECT max(salary), min(salary) FROM employee",
     "medium"),
    ("hr", "Three top earners?",
     "SELECT name FROM employee ORDER BY salary DESC LIMIT 3", "medium"),
    ("hr", "Employees with their department?",
     "SELECT T1.name, T2.dname FROM employee AS T1 JOIN dept AS T2 ON T1.dept_id = T2.dept_id",
     "medium"),
    ("hr", "Departments without employees?",
     ("SELECT dname FROM dept WHERE dept_id NOT IN (SELECT dept_id FROM employee "
     "WHERE dept_id IS NOT NULL)"), "hard"),
    ("hr", "Employees with an empty salary?",
     "SELECT count(*) FROM employee WHERE salary = ''", "easy"),
    ("hr", "Employees hired in 2019?",
     "SELECT name FROM employee WHERE hired LIKE '2019%'", "easy"),
    ("hr", "Salary total per department?",
     "SELECT dept_id, sum(salary) FROM employee GROUP BY dept_id", "medium"),
    ("hr", "Employees earning 40000 to 60000?",
     "SELECT name FROM employee WHERE salary BETWEEN 40000 AND 60000", "easy"),
    ("hr", "Departments with a budget over 100000?",
     "SELECT dname FROM dept WHERE budget > 100000", "easy"),
    ("hr", "Employees in departments 1 or 12?",
     ("SELECT name FROM employee WHERE dept_id IN (SELECT dept_id FROM dept WHERE "
     "dname IN ('Research', 'Legal'))"), "medium"),
    ("hr", "Employees whose salary is missing or not a number?",
     "SELECT name FROM employee WHERE salary IN ('', 'n/a')", "medium"),
    ("hr", "Rating of the best-paid employee?",
     "SELECT name, rating FROM employee ORDER BY salary DESC, name LIMIT 1", "medium"),
    ("hr", "Ratings rounded down?", "SELECT name, CAST(rating AS INT) FROM employee", "easy"),
]


def _write_db(path: str, script: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.remove(path)
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.commit()
    conn.close()


def _tables_json(sqlite_path: str, db_id: str) -> dict:
    """A tables.json entry (Spider's schema file) read back from a database."""
    conn = sqlite3.connect(sqlite_path)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid")]
        columns, types, pks, fks, index = [[-1, "*"]], ["text"], [], [], {}
        for t, table in enumerate(names):
            for cid, name, declared, _, _, pk in conn.execute(f'PRAGMA table_info("{table}")'):
                index[(table, name)] = len(columns)
                columns.append([t, name])
                numeric = any(k in (declared or "").upper() for k in ("INT", "REAL", "NUM"))
                types.append("number" if numeric else "text")
                if pk:
                    pks.append(index[(table, name)])
        for table in names:
            for fk in conn.execute(f'PRAGMA foreign_key_list("{table}")'):
                if (fk[2], fk[4]) in index:
                    fks.append([index[(table, fk[3])], index[(fk[2], fk[4])]])
    finally:
        conn.close()
    return {
        "db_id": db_id,
        "table_names_original": names,
        "table_names": [n.replace("_", " ") for n in names],
        "column_names_original": columns,
        "column_names": [[t, n.replace("_", " ")] for t, n in columns],
        "column_types": types,
        "primary_keys": pks,
        "foreign_keys": fks,
    }


_AFFINITY_DBS = {"car_shop": _CAR_SHOP, "concert_singer": _CONCERT_SINGER, "hr": _HR}


def _write_json(path: str, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def _spider_examples(golds) -> list[dict]:
    return [{"db_id": d, "question": q, "query": sql, "hardness": h} for d, q, sql, h in golds]


def write_affinity_fixture(root: str) -> str:
    """Spider-format folder: `database/<db>/<db>.sqlite`, `tables.json`, `dev.json` with the
    affinity gold queries."""
    entries = []
    for db_id, script in _AFFINITY_DBS.items():
        path = os.path.join(root, "database", db_id, f"{db_id}.sqlite")
        _write_db(path, script)
        entries.append(_tables_json(path, db_id))
    _write_json(os.path.join(root, "tables.json"), entries)
    _write_json(os.path.join(root, "dev.json"), _spider_examples(_AFFINITY_GOLDS))
    return root


def write_spider_release(root: str) -> str:
    """The affinity data set laid out as the Spider download: `database/`, `tables.json`,
    `train_spider.json` (car_shop), `train_others.json` (hr) and `dev.json` (concert_singer)."""
    write_affinity_fixture(root)
    by_db: dict[str, list] = {}
    for gold in _AFFINITY_GOLDS:
        by_db.setdefault(gold[0], []).append(gold)
    _write_json(os.path.join(root, "train_spider.json"), _spider_examples(by_db["car_shop"]))
    _write_json(os.path.join(root, "train_others.json"), _spider_examples(by_db["hr"]))
    _write_json(os.path.join(root, "dev.json"), _spider_examples(by_db["concert_singer"]))
    return root


def write_bird_release(root: str) -> str:
    """The affinity databases laid out as the BIRD download: `train_databases/` (car_shop, hr)
    with `train_tables.json` and `train.json`, `dev_databases/` (concert_singer) with
    `dev_tables.json` and `dev.json`; examples carry `SQL`, `evidence` and `difficulty`."""
    splits = {"train": ("car_shop", "hr"), "dev": ("concert_singer",)}
    levels = {"easy": "simple", "medium": "moderate", "hard": "challenging", "extra": "challenging"}
    question_id = 0
    for split, db_ids in splits.items():
        tables, examples = [], []
        for db_id in db_ids:
            path = os.path.join(root, f"{split}_databases", db_id, f"{db_id}.sqlite")
            _write_db(path, _AFFINITY_DBS[db_id])
            tables.append(_tables_json(path, db_id))
            for d, question, sql, hardness in _AFFINITY_GOLDS:
                if d != db_id:
                    continue
                examples.append({
                    "question_id": question_id,
                    "db_id": db_id,
                    "question": question,
                    "evidence": f"{db_id} stores some numbers as text",
                    "SQL": sql,
                    "difficulty": levels[hardness],
                })
                question_id += 1
        _write_json(os.path.join(root, f"{split}_tables.json"), tables)
        _write_json(os.path.join(root, f"{split}.json"), examples)
    return root


def write_spider_fixture(root: str) -> str:
    """Write a tiny Spider/BIRD-format data set into `root` (for tests and examples)."""
    path = os.path.join(root, "database", "concerts", "concerts.sqlite")
    _write_db(path, """
        CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT,
                             age INTEGER);
        CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, concert_name TEXT, year TEXT,
                              capacity INTEGER);
        CREATE TABLE singer_in_concert (concert_id INTEGER REFERENCES concert(concert_id),
                                        singer_id INTEGER REFERENCES singer(singer_id));
        INSERT INTO singer VALUES (1, 'Joan Tell', 'France', 41), (2, 'Rui Sol', 'Portugal', 29),
            (3, 'Tim Vox', 'France', 30), (4, 'Ana Lua', 'Portugal', 52),
            (5, 'Ed Ray', 'Chile', 34);
        INSERT INTO concert VALUES (1, 'Spring Nights', '2014', 5000), (2, 'Summer Air', '2015',
            7000), (3, 'Autumn Echo', '2015', 3001);
        INSERT INTO singer_in_concert VALUES (1, 1), (1, 2), (2, 2), (2, 3), (3, 4), (3, 1);
    """)
    spider = [
        ("How many singers are there?", "SELECT count(*) FROM singer", "easy"),
        ("Names of singers from France?", 'SELECT name FROM singer WHERE country LIKE "france"',
         "easy"),
        ("Average age, as SQLite computes it?", "SELECT sum(age) / count(*) FROM singer",
         "medium"),
        ("Name and age of the oldest singer?", "SELECT name, max(age) FROM singer", "medium"),
        ("Concerts per year, ordered by year?",
         "SELECT year, count(*) FROM concert GROUP BY year ORDER BY year", "medium"),
        ("Singers in the concert with the largest capacity?",
         ("SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS T2 ON "
         "T1.singer_id = T2.singer_id WHERE T2.concert_id = (SELECT concert_id FROM "
         "concert ORDER BY capacity DESC LIMIT 1)"), "hard"),
        ("Storage type of the age column?", "SELECT typeof(age) FROM singer LIMIT 1", "extra"),
    ]
    bird = [
        {
            "db_id": "concerts",
            "question": "How many concerts took place in 2015?",
            "evidence": "year is stored as text",
            "SQL": "SELECT COUNT(*) FROM concert WHERE year = '2015'",
            "difficulty": "simple",
        },
        {
            "db_id": "concerts",
            "question": "Capacity per singer of the 2015 concerts?",
            "evidence": "",
            "SQL": "SELECT SUM(capacity) / COUNT(DISTINCT T2.singer_id) FROM "
            "concert AS T1 JOIN singer_in_concert AS T2 ON T1.concert_id = T2.concert_id WHERE "
            "T1.year = '2015'",
            "difficulty": "moderate",
        },
    ]
    _write_json(os.path.join(root, "tables.json"), [_tables_json(path, "concerts")])
    _write_json(os.path.join(root, "dev.json"), [
        {"db_id": "concerts", "question": q, "query": sql, "hardness": h} for q, sql, h in spider
    ])
    _write_json(os.path.join(root, "bird_dev.json"), bird)
    return root
