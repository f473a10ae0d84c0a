"""Typed, frozen configs: Python config files, `--set key=value` overrides, validation.

Configs are frozen dataclasses (levanter style). A config file is a Python file that
exposes `get_config()` (big_vision style) returning one. Command-line overrides use
`--set section.key=value` (MaxText style: one base config plus overrides). Every
override and every field is type-checked and range-checked; an error names the key.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import importlib.util
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from jaxdiv.errors import JaxdivError


class ConfigError(JaxdivError, ValueError):
    """A config value is unknown, of the wrong type, or out of range. The message names the key."""


def param(default: Any = dataclasses.MISSING, *, help: str = "", ge=None, gt=None, le=None,
          lt=None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help text and optional numeric bounds, checked by `validate`."""
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type) -> Any:
    """A nested config section with its default instance."""
    return dataclasses.field(default_factory=cls, metadata={"help": (cls.__doc__ or "").strip()})


# ---------------------------------------------------------------------------
# Type checking and coercion of one value against a field annotation.

def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Return `value` converted to `annotation`, or raise ConfigError naming `key`."""
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} matches none of {annotation}")
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin is tuple:
        args = get_args(annotation)
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        variadic = len(args) == 2 and args[1] is Ellipsis
        if variadic and not isinstance(value, (tuple, list)):
            value = (value,)  # `--set grid.seeds=0` means the one-item tuple
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{key}: expected a tuple, got {value!r}")
        if variadic:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, dict):
            return from_dict(annotation, value, prefix=key)
        raise ConfigError(f"{key}: expected a {annotation.__name__} section, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected a bool, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an int, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a float, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {annotation}")


def _check_bounds(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for name, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                           ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{key}: {value!r} is out of range (must be {word} {bound})")


def validate(cfg: Any, prefix: str = "") -> Any:
    """Type- and range-check every field of `cfg`, recursively.

    Returns the config in canonical form (an int given for a float field becomes a float),
    or raises ConfigError naming the first bad key. A section may add cross-field checks
    in a `check()` method that raises ConfigError.
    """
    hints = _resolved_hints(type(cfg))
    canonical = {}
    for f in dataclasses.fields(cfg):
        key = f"{prefix}{f.name}"
        value = _coerce(getattr(cfg, f.name), hints[f.name], key)
        if dataclasses.is_dataclass(value):
            value = validate(value, prefix=key + ".")
        else:
            _check_bounds(value, f.metadata, key)
        canonical[f.name] = value
    cfg = dataclasses.replace(cfg, **canonical)
    check = getattr(cfg, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as err:
            raise ConfigError(f"{prefix}{err}") from None
    return cfg


# ---------------------------------------------------------------------------
# Overrides.

def _parse_literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string: `--set task.name=trec`


def apply_override(cfg: Any, key: str, value: Any, prefix: str = "") -> Any:
    """Return a copy of `cfg` with the dotted `key` replaced by `value` (type-checked).
    `prefix`: where `cfg` sits in the whole config, for messages."""
    head, _, rest = key.partition(".")
    names = {f.name for f in dataclasses.fields(cfg)}
    if head not in names:
        known = [prefix + name for name in sorted(names)]
        close = difflib.get_close_matches(head, sorted(names), n=1)
        hint = f"did you mean {prefix + close[0]!r}? " if close else ""
        raise ConfigError(f"unknown config key {prefix + head!r}; {hint}known keys here: {known}")
    if rest:
        child = getattr(cfg, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{prefix + head!r} is a value, not a section; cannot set {prefix + key!r}")
        return dataclasses.replace(cfg, **{head: apply_override(child, rest, value, f"{prefix}{head}.")})
    hint = _resolved_hints(type(cfg))[head]
    return dataclasses.replace(cfg, **{head: _coerce(value, hint, prefix + head)})


def apply_overrides(cfg: Any, overrides: typing.Iterable[str]) -> Any:
    """Apply `key=value` strings in order, then validate the result."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        cfg = apply_override(cfg, key.strip(), _parse_literal(text.strip()))
    return validate(cfg)


# ---------------------------------------------------------------------------
# Files, dicts and hashes.

def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> Any:
    """Import a config file, call its `get_config()`, apply overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"jaxdiv_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ConfigError(f"{path}:{err.lineno}: syntax error ({err.msg})") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} defines no get_config()")
    cfg = module.get_config()
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise ConfigError(f"{path}: get_config() returned a {type(cfg).__name__}, not a config "
                          f"dataclass instance (e.g. TrainJobConfig())")
    return apply_overrides(cfg, overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def stage_part(job: Any, stage_cls: type) -> Any:
    """The `stage_cls` fields of `job` as a `stage_cls`: a CLI job config (a subclass that adds
    the shared values, e.g. GenerateJob) narrowed to the stage section its entry function takes."""
    return stage_cls(**{f.name: getattr(job, f.name) for f in dataclasses.fields(stage_cls)})


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build `cls` from a (possibly partial) dict; unknown keys are an error."""
    hints = _resolved_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(prefix + k for k in unknown)} "
                          f"in {cls.__name__}")
    kwargs = {k: _coerce(v, hints[k], prefix + ("." if prefix else "") + k) for k, v in data.items()}
    return validate(cls(**kwargs))


def content_hash(value: Any) -> str:
    """A short, stable hash of JSON-able content (dataclasses through their dict form)."""
    if dataclasses.is_dataclass(value):
        value = to_dict(value)
    blob = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_hash(cfg: Any) -> str:
    """A short, stable content hash of a config (for caches and result tables)."""
    return content_hash(cfg)


def save_config(cfg: Any, directory: str | Path, name: str = "config.json", *,
                resume_safe: typing.Sequence[str] | None = None,
                shared: typing.Mapping[str, Any] | None = None) -> Path:
    """Write the fully resolved config next to a run's outputs (atomically).

    `shared`: the values a stage's entry is given beside its section (task, workdir, seed, ...),
    stored as top-level keys of the config, as the job config of the stage's CLI has them.
    `resume_safe`: the run resumes from what the directory holds, so an existing config.json
    must match the config except in these keys (a key, or a section prefix ending in '.'); other
    differences raise ConfigError naming them, allowed ones are applied and recorded in the
    file's `resumed_with_changes` list."""
    from jaxdiv.io import atomic_write_text

    path = Path(directory) / name
    whole = {**to_dict(cfg), **{k: to_dict(v) if dataclasses.is_dataclass(v) else v
                                for k, v in (shared or {}).items()}}
    current = json.loads(json.dumps(whole, default=str))  # tuples -> lists, as stored
    payload = {"config_class": type(cfg).__name__, "config_hash": content_hash(whole), "config": current}
    if resume_safe is not None and path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
            stored = previous["config"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} is damaged ({type(err).__name__}: {err}); restore it or use a "
                              f"new workdir") from None
        changed = _changed_keys(stored, current)
        refused = [k for k in changed if not any(k == s or (s.endswith(".") and k.startswith(s))
                                                 for s in resume_safe)]
        if refused:
            detail = ", ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
            raise ConfigError(f"{path}: cannot resume with a changed config ({detail}); keep the old "
                              f"values or use a new workdir")
        payload["resumed_with_changes"] = previous.get("resumed_with_changes", []) + ([changed] if changed else [])
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def _changed_keys(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every leaf that differs between two config dicts. Keys the
    old one lacks are skipped: options added to jaxdiv since, whose defaults keep the old behaviour."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = {}
        for key in sorted(set(old) | set(new)):
            if key in old:
                out.update(_changed_keys(old[key], new.get(key), f"{prefix}{key}."))
        return out
    return {} if old == new else {prefix.rstrip("."): (old, new)}


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, value, help) for every leaf field: what `--help` style listings print."""
    rows = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(value, prefix=f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", value, f.metadata.get("help", "")))
    return rows
