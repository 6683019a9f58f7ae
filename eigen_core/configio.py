"""YAML run configs validated by pydantic models, with dotted command-line overrides.

Every config section is a ``Section`` (``extra="forbid"``), so a typo'd key is an error. Errors
name the file, the line, the key path and the expected type::

    configs/quickstart.yaml:14: procedural.max_actions: expected int, got 'three'

A command loads only the sections it uses (``root`` model) and tolerates the other sections of
the same file, as long as their names are known (``KNOWN_SECTIONS``): the full file is validated
by ``eigen_jax.train``, whose model has every section.
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

KNOWN_SECTIONS: frozenset[str] = frozenset(
    {
        "run",
        "domain",
        "imports",
        "procedural",
        "pool",
        "episode",
        "verifier",
        "model",
        "pretrain",
        "sft_user",
        "sft_agent",
        "grpo",
        "eval",
        "checkpoint",
        "distributed",
    }
)
"""Top-level sections any run config may hold; kept equal to ``eigen_jax.config.RunConfig``'s
fields by a test."""

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)


def refuse_moved(data: Any, moved: Mapping[str, str]) -> Any:
    """For a ``model_validator(mode="before")``: a key (dotted path below the model) that has
    moved is an error naming its new place, so an old config fails with a fix, not a bare
    "extra field"."""
    if not isinstance(data, dict):
        return data
    found = []
    for old, new in moved.items():
        *parents, leaf = old.split(".")
        node: Any = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            found.append(f"{old} is now {new}")
    if found:
        raise ValueError("; ".join(found))
    return data


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names file, line, key path and expectation."""


def _line_map(node: yaml.Node, path: tuple[str, ...] = (), out: dict | None = None) -> dict:
    """Key path -> 1-based line of that key in the YAML source."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            p = (*path, str(k.value))
            out[p] = k.start_mark.line + 1
            _line_map(v, p, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            p = (*path, str(i))
            out[p] = v.start_mark.line + 1
            _line_map(v, p, out)
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _field_at(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[Any, type[BaseModel] | None]:
    """The annotation at ``loc`` (None if unknown) and the innermost model on the way."""
    tp: Any = model
    owner: type[BaseModel] | None = None
    for part in loc:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            owner = tp
            field = tp.model_fields.get(str(part))
            if field is None:
                return None, owner
            tp = field.annotation
        else:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[-1] if args else None
    return tp, owner


def _format_errors(
    e: ValidationError, model: type[BaseModel], source: str, lines: dict, overrides: Sequence[str]
) -> str:
    by_path = {tuple(parse_override(o)[0]): o for o in overrides}
    msgs = []
    for err in e.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        key = ".".join(str(p) for p in loc) or "<root>"
        path = tuple(str(p) for p in loc)
        override = next((o for p, o in by_path.items() if path[: len(p)] == p), None)
        if override is not None:
            where = f"override {override!r}"
        else:
            line = lines.get(path)
            where = f"{source}:{line}" if line else source
        tp, owner = _field_at(model, loc)
        if err["type"] == "extra_forbidden":
            known = ", ".join(sorted(owner.model_fields)) if owner else "?"
            msgs.append(f"{where}: {key}: unknown key (expected one of: {known})")
        elif err["type"] == "value_error":  # a validator's own message says what is expected
            msg = err["msg"].removeprefix("Value error, ")
            shown = "" if isinstance(err.get("input"), dict) else f"{err.get('input')!r}: "
            msgs.append(f"{where}: {key}: {shown}{msg}")
        elif err["type"] == "missing":
            msgs.append(f"{where}: {key}: required key missing (expected {_type_name(tp)})")
        else:
            expected = f"expected {_type_name(tp)}, " if tp is not None else ""
            msgs.append(f"{where}: {key}: {expected}got {err.get('input')!r} ({err['msg']})")
    return "\n".join(msgs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], value parsed as a YAML scalar or flow value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each dotted key in (a copy of) ``data``; creates intermediate mappings as needed."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a mapping")
            node = nxt
        node[path[-1]] = value
    return data


def load_config(
    root: type[M],
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    foreign_sections: Collection[str] = KNOWN_SECTIONS,
) -> M:
    """Load ``path`` (or nothing: defaults), apply overrides, validate with ``root``.

    Top-level keys that ``root`` lacks but that are in ``foreign_sections`` are ignored (they
    belong to other commands); any other unknown key is an error.
    """
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    lines: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{source}: config file not found")
        text = p.read_text()
        try:
            node = yaml.compose(text)
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{source}{at}: invalid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
        lines = _line_map(node) if node is not None else {}
    data = apply_overrides(data, overrides)
    ignored = set(foreign_sections) - set(root.model_fields)
    data = {k: v for k, v in data.items() if k not in ignored}
    try:
        return root.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, root, source, lines, overrides)) from None


def dump_config(config: BaseModel) -> str:
    """The fully resolved config as YAML (defaults included), loadable again by ``load_config``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--config FILE``, ``--print-config`` and positional ``key.path=value`` overrides."""
    parser.add_argument("--config", default=default, help="YAML run config (see configs/)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the fully resolved config and exit"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="override config values, e.g. procedural.seed=3",
    )


def add_flag_aliases(parser: argparse.ArgumentParser, aliases: dict[str, tuple[str, type]]) -> None:
    """Flags that stand for config keys (``{"--port": ("server.port", int)}``): each sets its key
    after the positional overrides, so a command's familiar flags and its config are one thing."""
    for flag, (key, kind) in aliases.items():
        if kind is bool:
            parser.add_argument(flag, action="store_const", const=True, default=None, help=f"{key}=true")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"same as {key}=...")


def alias_overrides(args: argparse.Namespace, aliases: dict[str, tuple[str, type]]) -> list[str]:
    """The ``key=value`` overrides of the alias flags given on the command line."""
    out = []
    for flag, (key, _) in aliases.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            out.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def config_from_args(
    root: type[M],
    args: argparse.Namespace,
    extra_overrides: Sequence[str] = (),
    *,
    foreign_sections: Collection[str] = KNOWN_SECTIONS,
) -> M:
    """The config named by ``add_config_args`` arguments, for a command's ``main``.

    On a config error prints it and exits 2; with ``--print-config`` prints the resolved config
    and exits 0. ``extra_overrides`` (from a command's own flags) apply after the positional ones.
    """
    try:
        cfg = load_config(
            root, args.config, [*args.overrides, *extra_overrides], foreign_sections=foreign_sections
        )
    except ConfigError as e:
        print(f"config error:\n{e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.print_config:
        print(dump_config(cfg), end="")
        raise SystemExit(0)
    return cfg
