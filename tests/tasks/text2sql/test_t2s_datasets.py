"""Spider and BIRD folders as the downloads ship them: format detection, splits, the comparison
rule of each data set, and the gold cache that spares re-running every gold on every start."""

import json
import os
import shutil

import pytest

from zorro_jax.tasks.text2sql import spider
from zorro_jax.tasks.text2sql.fixtures import write_bird_release, write_spider_release


def _read(path):
    with open(path) as f:
        return json.load(f)


def _write(path, data):
    with open(path, "w") as f:
        json.dump(data, f)


def _files(root):
    return sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names)


@pytest.fixture(scope="module")
def spider_root(tmp_path_factory):
    return write_spider_release(str(tmp_path_factory.mktemp("spider_release")))


@pytest.fixture(scope="module")
def bird_root(tmp_path_factory):
    return write_bird_release(str(tmp_path_factory.mktemp("bird_release")))


def test_detect_format(spider_root, bird_root, tmp_path):
    assert spider.detect_format(spider_root) == "spider"
    assert spider.detect_format(bird_root) == "bird"
    nested = tmp_path / "bird_nested"
    shutil.copytree(bird_root, nested / "dev")
    assert spider.detect_format(str(nested)) == "bird"
    (tmp_path / "empty" / "database").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing tables.json") as err:
        spider.detect_format(str(tmp_path / "empty"))
    assert "dev_databases" in str(err.value) and "['database']" in str(err.value)


def test_spider_splits(spider_root):
    before = _files(spider_root)
    train, report = spider.load_split(spider_root, "train")
    n_spider = len(_read(f"{spider_root}/train_spider.json"))
    n_others = len(_read(f"{spider_root}/train_others.json"))
    assert len(train) == n_spider + n_others == report.n_tasks
    assert train[0].task_id == "train_spider/0" and train[-1].task_id == f"train_others/{n_others - 1}"
    assert {t.db_id for t in train[n_spider:]} == {"hr"}
    assert report.rule == "spider" and report.agreement == 1.0
    dev, dev_report = spider.load_split(spider_root, "dev", format="spider")
    assert {t.db_id for t in dev} == {"concert_singer"} and dev_report.n_tasks == len(dev)
    assert _files(spider_root) == before  # copies and caches live in the cache directory
    assert all(not t.db_path.startswith(spider_root) for t in train + dev)
    with pytest.raises(ValueError, match="Spider splits"):
        spider.load_split(spider_root, "validation")


def test_bird_splits(bird_root, tmp_path):
    before = _files(bird_root)
    train, report = spider.load_split(bird_root, "train", cache_dir=str(tmp_path / "cache"))
    assert report.rule == "bird" and report.agreement == 1.0
    assert {t.db_id for t in train} == {"car_shop", "hr"}
    assert train[0].evidence == "car_shop stores some numbers as text"
    assert {t.difficulty for t in train} <= {"easy", "medium", "hard"}
    assert all(t.db_path.startswith(str(tmp_path / "cache")) for t in train)
    dev, dev_report = spider.load_split(bird_root, "dev")
    assert {t.db_id for t in dev} == {"concert_singer"} and dev_report.rule == "bird"
    assert _files(bird_root) == before
    with pytest.raises(FileNotFoundError, match="database"):
        spider.load_split(bird_root, "dev", format="spider")


def test_bird_split_in_its_own_folder(bird_root, tmp_path):
    """The BIRD train archive unpacks to train/; a root holding train/ and dev/ works too."""
    for split in ("train", "dev"):
        os.makedirs(tmp_path / split)
        shutil.copytree(f"{bird_root}/{split}_databases", tmp_path / split / f"{split}_databases")
        for name in (f"{split}.json", f"{split}_tables.json"):
            shutil.copy(f"{bird_root}/{name}", tmp_path / split / name)
    tasks, report = spider.load_split(str(tmp_path), "dev")
    assert report.rule == "bird" and len(tasks) == report.n_tasks > 0


def test_load_keeps_its_signature_and_reads_bird_databases(bird_root):
    tasks, report = spider.load(bird_root, examples_file="dev.json")
    assert report.rule == "bird" and tasks[0].db_id == "concert_singer"


def test_gold_verdicts_are_cached(spider_root, tmp_path, monkeypatch):
    root = str(tmp_path / "copy")
    shutil.copytree(spider_root, root)
    cache = str(tmp_path / "cache")
    _, first = spider.load_split(root, "dev", cache_dir=cache)
    ran = []
    real = spider.agreement_report
    monkeypatch.setattr(spider, "agreement_report",
                        lambda tasks, *a, **k: ran.append(len(tasks)) or real(tasks, *a, **k))
    _, again = spider.load_split(root, "dev", cache_dir=cache)
    assert ran == [] and again == first
    examples = _read(f"{root}/dev.json")
    examples[0]["query"] = "SELECT count(*) FROM singer WHERE age > 40"
    _write(f"{root}/dev.json", examples)
    tasks, changed = spider.load_split(root, "dev", cache_dir=cache)
    assert ran == [1]  # only the edited gold ran
    assert "WHERE singer.age > 40" in tasks[0].gold_sql and changed.agreement == 1.0


def test_report_lists_disagreements_with_reasons(spider_root, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(spider_root, root)
    examples = _read(f"{root}/dev.json")
    examples[1]["query"] = "SELECT typeof(year) FROM concert"
    examples[2]["query"] = "SELECT no_such_column FROM concert"
    examples[3]["query"] = "SELECT name FROM singer WHERE ((("
    _write(f"{root}/dev.json", examples)
    _, report = spider.load_split(root, "dev", cache_dir=str(tmp_path / "cache"))
    reasons = dict(report.disagreements)
    assert reasons["dev/1"] == "results differ"
    assert reasons["dev/2"].startswith("duckdb: error")
    assert reasons["dev/3"].startswith("duckdb: parse_error")  # reported, not raised
    assert report.n_agree == report.n_tasks - 3
