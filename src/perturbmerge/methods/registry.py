"""Methods by name. A `MethodSpec` says how to build the method from the config and which keys it reads; the keys
come from its parts (each part module declares its own), so what a method accepts cannot drift from what it uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import RunConfig
from ..errors import UserError, did_you_mean
from .base import COMMON_KEYS, Method


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    build: Callable[[RunConfig, list[str]], Method]  # (config, backbone's default LoRA targets) -> method
    keys: frozenset[str]  # config keys the method reads beyond COMMON_KEYS
    defaults: dict[str, Any] = field(default_factory=dict)  # config defaults of this method (below the user's)
    joint: bool = False  # trains once on the union of all tasks (a reference, not a continual method)
    kinds: frozenset[str] | None = None  # the task kinds it runs on (kinds/); None: every kind


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method; a name that is taken is refused (a silent overwrite would change what a run means)."""
    if spec.name in METHODS:
        raise ValueError(f"method '{spec.name}' is already registered; choose another name")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'{did_you_mean(name, METHODS)}; `perturbmerge methods` lists them")
    return METHODS[name]


def unused_keys(specs: list[MethodSpec], explicit_keys: set[str]) -> list[str]:
    """Keys the user set that none of `specs` reads (data.* keys belong to the benchmark and are checked there)."""
    used = set(COMMON_KEYS).union(*(spec.keys for spec in specs))
    return sorted(k for k in explicit_keys if k not in used and not k.startswith("data."))


def check_keys_apply(spec: MethodSpec, explicit_keys: set[str]) -> None:
    """A key the user set that this method never reads is an error (config must match code)."""
    unused = unused_keys([spec], explicit_keys)
    if unused:
        raise UserError(
            f"method '{spec.name}' does not use {', '.join(unused)}; remove it or pick a method that does "
            f"(`perturbmerge methods`)"
        )
