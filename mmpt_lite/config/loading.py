"""Loading a run configuration strictly from YAML: coercion to the section types, ``base:`` includes,
``--set a.b=c`` overrides, stage configs, saving.

Every key is checked against the dataclasses of ``config.sections``: an unknown key or a value of the wrong
type raises :class:`ConfigError` whose message names the file and the dotted key. Entry points turn that
error into one line on stderr and exit status 2. YAML is read with ``yaml.safe_load``: configs never execute
code and never name classes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from mmpt_lite.config.sections import STAGE_TASKS, ConfigConflict, ConfigError, RunConfig, StageOverrides
from mmpt_lite.fileio import atomic_write_text

# Where the default synthetic corpus lives when a config leaves data.root relative.
REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- validation
_SCI_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` checked against annotation ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (section), got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
            try:
                return _coerce(value, arm, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1])
    if tp == StageOverrides:
        return _stage_overrides(value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool (true/false), got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _SCI_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string; it is plainly a float
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):  # .nan passes every range check by failing no comparison
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {_type_name(tp)}")  # a bug in this file


def _flatten(value: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, v in value.items():
        dotted = f"{prefix}{key}"
        items += _flatten(v, dotted + ".") if isinstance(v, dict) else [(dotted, v)]
    return items


def _stage_overrides(value: Any, where: str) -> dict[str, Any]:
    """A stage's overrides, flattened to dotted keys and each checked against RunConfig (later keys win)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted keys (train.max_steps: 300), "
                          f"got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, v in _flatten(value):
        path = f"{where}.{key}"
        parts = str(key).split(".")
        if parts[0] == "stages" or key == "train.output_dir":
            raise ConfigError(f"{path}: a stage cannot set this (its folder is <train.output_dir>/<stage>)")
        tp = _annotation_at(parts)
        if tp is None or not all(parts):
            raise ConfigError(f"{path}: unknown key")
        if dataclasses.is_dataclass(tp):
            raise ConfigError(f"{path}: is a section; give its keys (e.g. {key}.<key>)")
        out[key] = _coerce(v, tp, path)
    return out


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise ConfigError(f"{path}: unknown key (valid keys here: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def config_from_dict(data: dict, source: str = "<dict>") -> RunConfig:
    """Build a RunConfig from a plain mapping; errors read ``source: dotted.key: reason``."""
    try:
        return _build(RunConfig, data, "")
    except ConfigError as exc:
        raise type(exc)(f"{source}: {exc}") from None


# --------------------------------------------------------------------------- files and overrides
class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # unhashable: the base class says so with its line
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (first given on line "
                                                        f"{first})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> ConfigError:
    """One line: the file, the line of the problem, what PyYAML says (its messages span several lines)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        line = mark.line + 1
    elif isinstance(getattr(exc, "position", None), int):  # ReaderError: a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
    else:
        line = None
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" line {line}:" if line is not None else ""
    return ConfigError(f"{path}:{where} invalid YAML: {' '.join(str(problem).split())}")


def _read_yaml(path: Path, role: str = "config file") -> dict:
    """The mapping of one YAML file; ConfigError naming ``path`` for anything that is not a YAML mapping."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a {role}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {role} not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {role} ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          f"a {role} is a YAML text file") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _yaml_error(path, text, exc) from None
    if data is None:
        raise ConfigError(f"{path}: empty {role} (no settings); write at least one section, e.g. train: {{...}}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML run file and its single optional ``base:`` include into one mapping."""
    path = Path(path)
    data = _read_yaml(path)
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: expected a file name, got {type(base).__name__} {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path == path.resolve():
        raise ConfigError(f"{path}: base: {base} is this file (a file cannot include itself)")
    if not base_path.exists():
        raise ConfigError(f"{path}: base: {base_path} not found")
    base_data = _read_yaml(base_path, "base config file")
    if "base" in base_data:
        again = base_data["base"]
        cycle = isinstance(again, str) and (base_path.parent / again).resolve() == path.resolve()
        why = f"it includes {path} back (a cycle)" if cycle else "a base file may not include another (one level only)"
        raise ConfigError(f"{base_path}: base: {why}")
    try:  # validate the base on its own so its errors name the base file
        config_from_dict(base_data, str(base_path))
    except ConfigError as exc:
        raise ConfigError(str(exc)) from None
    return _merge(base_data, data)


def _annotation_at(parts: list[str]) -> Any:
    """The annotation of a dotted key in RunConfig, or None if the path is not a field."""
    tp: Any = RunConfig
    for part in parts:
        if tp == StageOverrides:  # stages.<stage>.<dotted key of RunConfig>
            tp = RunConfig
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` strings; the value is parsed as a YAML scalar/list (``3``, ``true``, ``[1,2]``)."""
    data = _merge({}, data)
    conflict = None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. train.max_steps=100")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if _annotation_at(parts) is str:
            value = raw  # verbatim: YAML would read "12:00:00" as an int and "no" as a bool
        else:
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
        if not all(parts):
            raise ConfigError(f"--set {item}: empty component in key {key!r}")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is a value, not a section")
        node[parts[-1]] = value
        # Validate after each override so the message names this --set and the dotted key. A conflict
        # between sections waits for the remaining overrides (`--set loss.name=infonce --set
        # data.action_negatives.count=0` is fine in either order) and, if still there, names the first --set
        # that left it.
        try:
            config_from_dict(data, f"--set {item}")
        except ConfigConflict:
            conflict = conflict or item
        else:
            conflict = None
    if conflict is not None:
        config_from_dict(data, f"--set {conflict}")
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read, merge, override and validate a run config. Raises ConfigError on any problem."""
    data = read_config_file(path)
    config_from_dict(data, str(path))  # file errors name the file, before overrides
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, str(path))


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *sections, last = key.split(".")
    for part in sections:
        data = data.setdefault(part, {})
    data[last] = value


def stage_config(cfg: RunConfig, stage: str, overrides: list[str] | None = None) -> RunConfig:
    """The run config of one training or report stage of ``cfg.stages``: ``cfg`` + the stage's overrides +
    ``overrides`` (the command line's ``--set``, re-applied so they win in every stage), in
    ``<train.output_dir>/<stage>``, with ``stages`` cleared (its saved config.yaml is a plain run). A
    contrastive stage after a masked one in ``stages.order`` starts from the masked stage's encoder."""
    data = dataclasses.asdict(cfg)
    data["stages"] = {}
    where = f"stages.{stage}"
    wanted = STAGE_TASKS.get(stage)
    if wanted is not None:
        data["train"]["task"] = wanted
    for key, value in getattr(cfg.stages, stage).items():
        _set_dotted(data, key, value)
    try:
        data = apply_overrides(data, [o for o in overrides or [] if not o.split("=", 1)[0].strip().startswith("stages.")])
        data["train"]["output_dir"] = str(Path(cfg.train.output_dir) / stage)
        order = cfg.stages.order
        if stage == "contrastive" and "masked" in order and order.index("masked") < order.index(stage):
            data["model"]["video"]["init_from"] = str(Path(cfg.train.output_dir) / "masked")
        out = config_from_dict(data, where)
    except ConfigError as exc:
        raise type(exc)(str(exc).replace("--set", f"{where}: --set", 1)) from None
    if wanted is not None and out.train.task != wanted:
        raise ConfigError(f"{where}.train.task: the {stage} stage runs train.task {wanted!r}, not {out.train.task!r}")
    return out


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dump_config(cfg))


def resolve_path(p: str) -> Path:
    """Relative paths in configs resolve against the repository root, so runs work from any cwd."""
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() else REPO_ROOT / path
