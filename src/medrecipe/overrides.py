"""Dotted command-line overrides (`-o a.b.0.c=value`), converted by the target field's type.

An override's value is text. It is converted by the annotation of the field it lands on,
found by walking the config model along the dotted path (nested models, list elements by
index, dict values by key):

- bool: true/false, yes/no, on/off, 1/0 (any case); int and float: numbers (`1e-5`, `0x10`);
  Literal: one of its values; str: the text as written (`name=123` stays "123");
  a field that accepts null: `null` or `~` (or nothing after `=`);
  lists, dicts and models: YAML flow syntax (`[a, b]`, `{k: v}`), elements converted by
  their own types.
- Free-form places (`dict[str, Any]` values such as `extra` or `options`, `Any`, keys the
  model does not know): the YAML 1.2 core schema. `true`/`false`, `null`/`~`, integers and
  floats are converted, `[...]`/`{...}` are flow collections, and everything else stays the
  text as written: `yes`, `no`, `on`, `off`, dates and version numbers are strings.
- A value wrapped in quotes (`'"1"'` in a shell, i.e. `"1"`) is always the string inside.

A value that does not fit its field is an error naming the override and the expected type.
"""

from __future__ import annotations

import enum
import math
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from medrecipe.errors import RecipeError

__all__ = ["apply_overrides", "parse_override_value"]

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution)
_CORE_NULL = re.compile(r"(?:~|null|Null|NULL|)")
_CORE_BOOL = re.compile(r"(?:true|True|TRUE|false|False|FALSE)")
_CORE_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}
_QUOTES = ("'", '"')


class _Mismatch(Exception):
    """The text does not fit the annotation; `expected` says what would."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


# --------------------------------------------------------------------------- annotations


def _unwrap(ann: Any) -> Any:
    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    return ann


def _is_union(ann: Any) -> bool:
    return get_origin(ann) in (Union, types.UnionType)


def _members(ann: Any) -> list[Any]:
    return [_unwrap(a) for a in get_args(ann)] if _is_union(ann) else [ann]


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def child_annotation(ann: Any, key: str) -> Any:
    """The annotation one dotted-path step below `ann` (Any where the model does not say)."""
    ann = _unwrap(ann)
    if _is_union(ann):
        found = [c for c in (child_annotation(m, key) for m in _members(ann) if m is not type(None))
                 if c is not Any]
        unique = list(dict.fromkeys(found))
        if not unique:
            return Any
        return unique[0] if len(unique) == 1 else Union[tuple(unique)]  # noqa: UP007
    if _is_model(ann):
        for name, field in ann.model_fields.items():
            if key in (name, field.alias):
                return field.annotation
        return Any  # unknown key: validation reports it with its path
    origin, args = get_origin(ann), get_args(ann)
    if origin in (list, set, frozenset) or ann in (list, set, frozenset):
        return args[0] if args and key.lstrip("-").isdigit() else Any
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[int(key)] if key.isdigit() and int(key) < len(args) else Any
    if origin is dict and len(args) == 2:
        return args[1]
    return Any


# --------------------------------------------------------------------------- scalars


def core_scalar(text: str) -> Any:
    """A plain (unquoted) YAML 1.2 core-schema scalar: bool, null, int, float, else the text."""
    if _CORE_NULL.fullmatch(text):
        return None
    if _CORE_BOOL.fullmatch(text):
        return text.lower() == "true"
    if _CORE_INT.fullmatch(text):
        return int(text) if text[:2] not in ("0o", "0x") else int(text, 0)
    if _CORE_FLOAT.fullmatch(text):
        low = text.lower().lstrip("+")
        if low in (".inf", "-.inf"):
            return -math.inf if low.startswith("-") else math.inf
        if low == ".nan":
            return math.nan
        return float(text)
    return text


def _to_int(text: str) -> int:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return int(t, 0)  # 0x10, 0o17, 0b101
    except ValueError:
        pass
    try:
        f = float(t)
    except ValueError:
        raise _Mismatch("an integer") from None
    if f.is_integer():
        return int(f)  # 1e3
    raise _Mismatch("an integer")


def _to_float(text: str) -> float:
    t = text.strip()
    low = t.lower().lstrip("+")
    if low in (".inf", "-.inf", ".nan"):
        return core_scalar(t.lstrip("+"))
    try:
        return float(t)
    except ValueError:
        raise _Mismatch("a number") from None


def _describe(ann: Any) -> str:
    ann = _unwrap(ann)
    if _is_union(ann):
        return " or ".join(dict.fromkeys(_describe(m) for m in _members(ann)))
    if ann is type(None):
        return "null"
    if ann is bool:
        return "a boolean (true/false, yes/no, on/off, 1/0)"
    if ann is int:
        return "an integer"
    if ann is float:
        return "a number"
    if ann is str:
        return "a string"
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(ann))
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in ann)
    origin = get_origin(ann) or ann
    if origin in (list, tuple, set, frozenset):
        return "a list such as [a, b]"
    if origin is dict or _is_model(ann):
        return "a mapping such as {key: value}"
    return getattr(ann, "__name__", str(ann))


def _union_order(member: Any) -> int:
    """Try specific types before general ones: bool, int, float, Literal/Enum, others, str."""
    if member is bool:
        return 0
    if member is int:
        return 1
    if member is float:
        return 2
    if get_origin(member) is Literal or (isinstance(member, type) and issubclass(member, enum.Enum)):
        return 3
    if member is str:
        return 5
    return 4


def coerce_text(text: str, ann: Any) -> Any:
    """Convert unquoted text by a field annotation; raises _Mismatch when it does not fit."""
    ann = _unwrap(ann)
    if ann is Any or ann is object:
        return core_scalar(text)
    if _is_union(ann):
        members = _members(ann)
        if type(None) in members and _CORE_NULL.fullmatch(text):
            return None
        candidates = sorted((m for m in members if m is not type(None)), key=_union_order)
        for m in candidates:
            if _is_collection(m):
                continue  # collections and models take [..] / {..}, tried below
            try:
                return coerce_text(text, m)
            except _Mismatch:
                continue
        if any(_is_collection(m) for m in candidates):
            return text  # validation decides (a model may accept a shorthand string)
        raise _Mismatch(_describe(ann))
    if ann is type(None):
        if _CORE_NULL.fullmatch(text):
            return None
        raise _Mismatch("null")
    if ann is bool:
        try:
            return _BOOL_WORDS[text.strip().lower()]
        except KeyError:
            raise _Mismatch(_describe(bool)) from None
    if ann is int:
        return _to_int(text)
    if ann is float:
        return _to_float(text)
    if ann is str:
        return text
    if get_origin(ann) is Literal:
        for v in get_args(ann):
            if isinstance(v, str) and v == text:
                return v
        for v in get_args(ann):
            if not isinstance(v, str):
                try:
                    if coerce_text(text, type(v)) == v:
                        return v
                except _Mismatch:
                    pass
        raise _Mismatch(_describe(ann))
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        for m in ann:
            if text in (str(m.value), m.name):
                return m.value
        raise _Mismatch(_describe(ann))
    # Lists, dicts, models and other types: plain text goes to validation as written (a model
    # may accept a shorthand string, e.g. `executor: ray`); use [..] / {..} for collections.
    return text


def _accepts_collection(ann: Any) -> bool:
    """Whether a list or mapping could be valid here (not for bool/int/float/str/Literal/...)."""
    ann = _unwrap(ann)
    if _is_union(ann):
        return any(_accepts_collection(m) for m in _members(ann))
    if ann in (bool, int, float, str, type(None)) or get_origin(ann) is Literal:
        return False
    return not (isinstance(ann, type) and issubclass(ann, enum.Enum))


def _is_collection(ann: Any) -> bool:
    origin = get_origin(ann) or ann
    return origin in (list, tuple, set, frozenset, dict) or _is_model(ann)


# --------------------------------------------------------------------------- values


def _from_node(node: yaml.Node, ann: Any) -> Any:
    """A composed YAML node converted by annotation (quoted scalars stay strings)."""
    if isinstance(node, yaml.ScalarNode):
        if node.style in _QUOTES:
            return node.value
        return coerce_text(node.value, ann)
    if isinstance(node, yaml.SequenceNode):
        return [_from_node(child, child_annotation(ann, str(i)))
                for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = _from_node(knode, _key_annotation(ann))
            out[key] = _from_node(vnode, child_annotation(ann, str(key)))
        return out
    raise _Mismatch(_describe(ann))


def _key_annotation(ann: Any) -> Any:
    ann = _unwrap(ann)
    for m in _members(ann):
        if get_origin(m) is dict and len(get_args(m)) == 2:
            return get_args(m)[0]
    return str


def parse_override_value(raw: str, ann: Any = Any) -> Any:
    """The value of one override, converted by the annotation of its target field.

    Raises ValueError with the expected type when the text does not fit.
    """
    text = raw.strip()
    if text[:1] in ("[", "{") and not _accepts_collection(ann):
        if str in _members(_unwrap(ann)):
            return text  # a string field takes the text as written
        raise ValueError(f"expected {_describe(ann)}, got {text!r}")
    if text[:1] in _QUOTES or text[:1] in ("[", "{"):
        try:
            node = yaml.compose(text, Loader=yaml.BaseLoader)
        except yaml.YAMLError as e:
            what = "quoted string" if text[:1] in _QUOTES else "[..]/{..} flow collection"
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"not a valid YAML {what} ({problem}); quote the whole value "
                             "to pass it as a string") from None
        try:
            return _from_node(node, ann) if node is not None else None
        except _Mismatch as m:
            raise ValueError(f"expected {m.expected} inside {text!r}") from None
    try:
        return coerce_text(text, ann)
    except _Mismatch as m:
        raise ValueError(f"expected {m.expected}, got {text!r}") from None


# --------------------------------------------------------------------------- applying


def apply_overrides(data: dict[str, Any], overrides: list[str],
                    model: type[BaseModel] | None = None) -> dict[str, Any]:
    """Apply `a.b.0.c=value` overrides to nested config data (lists indexed by number).

    With `model`, each value is converted by the type of the field it sets (see the module
    docstring); without one every value is free-form.
    """
    for ov in overrides:
        if "=" not in ov:
            raise RecipeError([(ov, "an override must look like path.to.key=value")])
        path, _, raw = ov.partition("=")
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise RecipeError([(ov, "empty override path")])
        ann: Any = model if model is not None else Any
        for key in keys:
            ann = child_annotation(ann, key)
        try:
            value = parse_override_value(raw, ann)
        except ValueError as e:
            raise RecipeError([(".".join(keys), f"override {ov!r}: {e}")]) from None
        node: Any = data
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                try:
                    idx = int(key)
                    node[idx]  # noqa: B018 - bounds check
                except (ValueError, IndexError):
                    loc = ".".join(keys[: i + 1])
                    raise RecipeError([(loc, f"no list element {key!r} (have {len(node)})")]) from None
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                loc = ".".join(keys[:i])
                raise RecipeError([(loc, "cannot override inside a scalar value")])
    return data
