"""Text-to-SQL tests keep DuckDB copies and gold caches in a temporary cache directory."""

import os

import pytest

from zorro_jax.tasks.text2sql.sqlite_copy import CACHE_ENV


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("zorro_cache"))
    yield os.environ[CACHE_ENV]
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old
