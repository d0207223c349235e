"""Reading a configuration: YAML files (safe_load with duplicate keys and absurd nesting refused), `--set
key=value` overrides, type coercion against the schema, the layering defaults < benchmark < file < flags < --set
with the record of explicitly set keys, config differences, and the key listing of `perturbmerge keys`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from ..errors import UserError, did_you_mean
from .settings import RunConfig, _coerce
from .validation import validate


# settings that cannot change a run's results
RESULT_NEUTRAL_KEYS = frozenset({"checkpoint", "save_task_models", "save_model", "log"})


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                       prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (result-neutral keys ignored). A key missing from `old` (a run from a
    version before the key existed) matches when `new` has it at its default."""
    defaults = RunConfig().to_dict() if defaults is None else defaults
    keys = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in RESULT_NEUTRAL_KEYS:
            continue
        a, b, d = old.get(key), new.get(key), defaults.get(key)
        if key not in old and b == d:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += config_differences(a, b, d if isinstance(d, Mapping) else {}, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def nested(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}."""
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def get_dotted(config: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Dotted names of every settable key."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


@dataclass(frozen=True)
class KeyInfo:
    key: str
    kind: str  # "int", "float or null", "one of a, b", ...
    help: str


def key_infos(cls: type = RunConfig, prefix: str = "") -> list[KeyInfo]:
    """Every settable key with its type (allowed values for a choice) and help text, in declaration order."""
    infos = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            infos += key_infos(annotation, prefix + f.name + ".")
            continue
        args = typing.get_args(annotation)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
        if typing.get_origin(base) is Literal:
            kind = "one of " + ", ".join(typing.get_args(base))
        else:
            kind = "list of names" if typing.get_origin(base) is list else getattr(base, "__name__", str(base))
        infos.append(KeyInfo(prefix + f.name, kind + (" or null" if optional else ""), f.metadata.get("help", "")))
    return infos


def _merge_into(target: Any, data: Mapping[str, Any], prefix: str, explicit: set[str] | None) -> None:
    hints = typing.get_type_hints(type(target))
    names = [f.name for f in dataclasses.fields(target)]
    for key, value in data.items():
        dotted = prefix + str(key)
        if key not in names:
            raise UserError(f"unknown config key '{dotted}'{did_you_mean(dotted, all_keys())}; see `perturbmerge keys`")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, Mapping):
                raise UserError(f"{dotted} must be a mapping of its sub-keys, got {value!r}")
            _merge_into(getattr(target, key), value, dotted + ".", explicit)
            continue
        setattr(target, key, _coerce(dotted, value, annotation))
        if explicit is not None:
            explicit.add(dotted)


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """['lora.rank=4', 'lr=1e-3'] → {'lora': {'rank': 4}, 'lr': 0.001}; values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    given: set[str] = set()
    for item in assignments:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'; e.g. --set epochs=3")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part.strip() for part in key.split(".")):
            raise UserError(f"--set '{item}' has an empty key{' part' if key else ''}; give key=value with a dotted "
                            f"key, e.g. --set lora.rank=4 (`perturbmerge keys` lists them)")
        if key in given:
            raise UserError(f"--set gives {key} twice; keep one")
        given.add(key)
        try:
            value = safe_load_strict(raw, f"--set {key}") if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads '1e-3' as a string
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{part}' is not a group of keys")
        node[parts[-1]] = value
    return nested


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (instead of silently keeping the last)."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # a complex key: left to the base loader (config keys are strings)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, mark) -> None:
        super().__init__(f"key {key!r} given twice")
        self.key, self.problem_mark = key, mark


MAX_YAML_DEPTH = 64  # no config is nested this deep; deeper input is refused before the parser recurses


def _nesting_depth(text: str) -> int:
    """An upper bound of the bracket / indentation nesting of YAML `text`, without parsing it."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    indents = {len(line) - len(line.lstrip(" ")) for line in text.splitlines() if line.strip()}
    return max(deepest, len(indents))


def safe_load_strict(text: str, what: str) -> Any:
    """yaml.safe_load with duplicate keys and absurd nesting refused (UserError naming `what`)."""
    if _nesting_depth(text) > MAX_YAML_DEPTH:
        raise UserError(f"{what} is nested more than {MAX_YAML_DEPTH} levels deep; config keys nest a few levels "
                        f"at most")
    loader = _StrictLoader(text)  # what yaml.safe_load does, with the stricter SafeLoader
    try:
        return loader.get_single_data()
    except _DuplicateKey as exc:
        raise UserError(f"{what} gives the key {exc.key!r} twice (line {exc.problem_mark.line + 1}); keep one") from None
    except RecursionError:
        raise UserError(f"{what} is nested too deeply to read; config keys nest a few levels at most") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; pass an existing YAML file to --config")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"config file '{path}' is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start});"
                        f" save it as UTF-8") from None
    try:
        data = safe_load_strict(text, f"config file '{path}'")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file '{path}' is not valid YAML{where}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys, not {type(data).__name__}")
    return _parse_numeric_strings(data)


def _parse_numeric_strings(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _parse_numeric_strings(v) for k, v in data.items()}
    if isinstance(data, str) and _looks_numeric(data) and data.strip().lower() not in ("nan", "inf", "-inf"):
        return float(data)
    return data


def build_config(layers: list[Mapping[str, Any]], explicit_layers: list[Mapping[str, Any]],
                 check: bool = True) -> tuple[RunConfig, set[str]]:
    """Apply `layers` (defaults, silently) then `explicit_layers` (recorded as user-set), and validate (`check`)."""
    config = RunConfig()
    explicit: set[str] = set()
    for layer in layers:
        _merge_into(config, layer, "", None)
    for layer in explicit_layers:
        _merge_into(config, layer, "", explicit)
    if check:
        validate(config)
    return config, explicit
