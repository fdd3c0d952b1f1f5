"""Reading params.yaml: YAML 1.2 booleans, no duplicate keys, `--set KEY=VALUE` overrides, errors naming the key."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.core.config import Params
from pipeline.core.errors import ConfigError


class ParamsLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false) that refuses duplicate keys."""

    yaml_implicit_resolvers: typing.ClassVar = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping of `node`; ConstructorError naming both lines when a key appears twice."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)
        return mapping


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str) -> Any:
    """The YAML document in `text`, read with ParamsLoader."""
    return yaml.load(text, Loader=ParamsLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=VALUE` into its key path and a value: the text itself for text fields, else YAML-typed."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    path = key.strip().split(".")
    if _is_text_field(path) and raw.strip() not in ("null", "~"):
        return path, raw
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def _is_text_field(path: list[str]) -> bool:
    """True when the params key at `path` holds text (a str, or an optional str)."""
    model: Any = Params
    annotation: Any = None
    for part in path:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        model = annotation
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return str in options


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `--set KEY=VALUE` applied."""
    merged = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for i, part in enumerate(path[:-1]):
            if node.get(part) is None:  # missing or null (a rule that is off): --set a.b.c=V turns it on
                node[part] = {}
            child = node[part]
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return merged


def build_params(raw: dict[str, Any]) -> Params:
    """Validate a raw mapping into Params, naming the offending key on error."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key {key}")
            elif isinstance(err.get("input"), dict):  # a section-level rule: the value is the whole section
                problems.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
            else:
                problems.append(f"{key}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
        raise ConfigError("invalid params: " + "; ".join(problems)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read a params file, apply overrides and validate."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read params file {path}: {exc.strerror}") from None
    try:
        raw = read_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return build_params(apply_overrides(raw, overrides or []))


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}
