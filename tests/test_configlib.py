import dataclasses
import json
from typing import Literal

import pytest

from jaxdiv.configlib import (ConfigError, apply_overrides, config_hash, describe, from_dict,
                              load_config, param, save_config, section, stage_part, to_dict, validate)


@dataclasses.dataclass(frozen=True)
class Optim:
    learning_rate: float = param(1e-3, gt=0.0, help="peak learning rate")
    schedule: Literal["cosine", "linear"] = param("cosine")
    betas: tuple[float, float] = param((0.9, 0.999))

    def check(self):
        if self.betas[0] >= self.betas[1]:
            raise ConfigError("betas: beta1 must be below beta2")


@dataclasses.dataclass(frozen=True)
class Job:
    seed: int = param(0)
    steps: int = param(10, ge=1)
    name: str = param("run")
    levels: tuple[int, ...] = param((0, 3, 6))
    budget: int | None = param(None, ge=1)
    use_bf16: bool = param(False)
    optim: Optim = section(Optim)


def test_overrides_are_typed_and_nested():
    cfg = apply_overrides(Job(), ["optim.learning_rate=3e-4", "steps=20", "name=trec-run",
                                  "levels=(1, 2)", "use_bf16=true", "budget=50",
                                  "optim.schedule=linear", "optim.betas=(0.8, 0.95)"])
    assert cfg.optim.learning_rate == 3e-4 and cfg.steps == 20 and cfg.name == "trec-run"
    assert cfg.levels == (1, 2) and cfg.use_bf16 is True and cfg.budget == 50
    assert cfg.optim.schedule == "linear" and cfg.optim.betas == (0.8, 0.95)
    # Comma lists work without brackets, and an int given for a float is canonicalised.
    cfg = apply_overrides(Job(), ["levels=4,5", "optim.learning_rate=1"])
    assert cfg.levels == (4, 5) and isinstance(cfg.optim.learning_rate, float)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=1e-3", "unknown config key 'optim.lr'"),
    ("nosuch.key=1", "unknown config key 'nosuch'"),
    ("steps=ten", "steps: expected an int"),
    ("steps=0", "steps: 0 is out of range (must be >= 1)"),
    ("optim.learning_rate=-1", "optim.learning_rate: -1.0 is out of range (must be > 0.0)"),
    ("optim.schedule=step", "optim.schedule: 'step' is not one of ['cosine', 'linear']"),
    ("optim.betas=(0.99, 0.9)", "optim.betas: beta1 must be below beta2"),
    ("budget=0", "budget: 0 is out of range"),
    ("seed", "is not of the form key=value"),
    ("seed.x=1", "'seed' is a value, not a section"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Job(), [override])
    assert message in str(err.value)


def test_validate_catches_bad_values_written_in_config_files():
    with pytest.raises(ConfigError, match="steps: expected an int"):
        validate(Job(steps="5"))
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        validate(Job(optim=Optim(learning_rate=0.0)))


def test_config_file_roundtrip(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(
        "from tests.test_configlib import Job\n"
        "def get_config():\n"
        "    return Job(name='from-file', steps=3)\n")
    cfg = load_config(path, ["steps=4"])
    assert cfg.name == "from-file" and cfg.steps == 4
    saved = json.loads(save_config(cfg, tmp_path / "run").read_text())
    assert saved["config"]["steps"] == 4 and saved["config_hash"] == config_hash(cfg)
    assert to_dict(from_dict(Job, saved["config"])) == to_dict(cfg)
    assert config_hash(cfg) != config_hash(apply_overrides(cfg, ["seed=1"]))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.py")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['bogus'\]"):
        from_dict(Job, {"bogus": 1})


@dataclasses.dataclass(frozen=True)
class Stage:
    steps: int = param(10, ge=1)
    optim: Optim = section(Optim)


@dataclasses.dataclass(frozen=True)
class StageJob(Stage):
    seed: int = param(0)
    name: str = param("run")


def test_a_stage_entry_records_its_shared_values_as_the_cli_job_does(tmp_path):
    job = apply_overrides(StageJob(), ["steps=4", "optim.learning_rate=0.5", "seed=3"])
    stage = stage_part(job, Stage)
    assert type(stage) is Stage and to_dict(stage) == {"steps": 4, "optim": to_dict(job.optim)}
    by_job = json.loads(save_config(job, tmp_path / "job").read_text())
    by_stage = json.loads(save_config(stage, tmp_path / "stage", shared={"seed": 3, "name": "run"}).read_text())
    assert by_stage["config"] == by_job["config"] and by_stage["config_hash"] == by_job["config_hash"]
    # a resume with another shared value is refused like a changed config key
    with pytest.raises(ConfigError, match="seed: 3 -> 4"):
        save_config(stage, tmp_path / "stage", resume_safe=(), shared={"seed": 4, "name": "run"})


def test_describe_lists_every_leaf_with_help():
    rows = {key: (value, text) for key, value, text in describe(Job())}
    assert rows["optim.learning_rate"] == (1e-3, "peak learning rate")
    assert set(rows) == {"seed", "steps", "name", "levels", "budget", "use_bf16",
                         "optim.learning_rate", "optim.schedule", "optim.betas"}
