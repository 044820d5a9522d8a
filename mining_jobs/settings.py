"""One convention for every job's settings.

Each job's settings are one dataclass (``MineConfig``, ``TrainConfig``, ``EvalConfig``, ``RerankerJob``,
``JudgeJob``, ``LoopConfig``). Its fields carry their help text in ``metadata["help"]`` (``opt``) and their
choices as ``Literal`` annotations; a field whose type is another settings dataclass is a section (a TOML
table, ``section.key`` on the command line), or, marked ``flatten``, a group whose keys sit beside the parent's.
From the dataclass alone this module generates, so they cannot disagree:

- the command-line flags (``add_flags`` / ``flag_values``): ``--base-model``, ``--filter.relative-margin``;
- the documented example TOML (``example_toml``; ``examples/<kind>.toml`` are written by it);
- ``--set key=value`` (``apply_set``): any key, with a TOML value;
- the job service's validation (``build``) and its OpenAPI schema (``json_schema``).

Values are checked against the annotations (type, ``Literal`` choices, ``None`` where allowed) with errors that
name the field; then the dataclass's own ``validate()`` checks ranges and combinations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from retriever.errors import HardnegError

COMMAND_LINE = "command line"  # the source of settings given as flags: errors name the flag (--lr)


class ConfigError(HardnegError, ValueError):
    """A job's settings are invalid; the message names the field, and so does ``field`` (``section.key`` or
    ``key``; the job service returns it as the error's location)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def opt(default: Any, help: str, **meta: Any):
    """A settings field: its default and help text (``meta``: ``aliases`` = extra command-line flags)."""
    meta = {"help": help, **meta}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str, *, flatten: bool = False, exclude: tuple[str, ...] = (),
            derived: dict[str, str] | None = None):
    """A field holding a settings dataclass: a TOML table (``flatten``: its keys sit beside the parent's);
    ``exclude``: its keys that are not settings here (e.g. the ones the ANCE loop sets per round); ``derived``:
    its keys (``a.b``) whose default here comes from elsewhere, with where (left unset in the example TOML)."""
    return field(default_factory=cls, metadata={"help": help, "flatten": flatten, "exclude": exclude,
                                                "derived": derived or {}})


# ------------------------------------------------------------------------------------------ the fields


@dataclass(frozen=True)
class Option:
    """One leaf setting: ``key`` is what the user writes (``("filter", "relative_margin")``), ``attr`` where it
    lives on the object (differs under a flattened group)."""

    key: tuple[str, ...]
    attr: tuple[str, ...]
    hint: Any
    default: Any
    help: str
    aliases: tuple[str, ...] = ()
    derived: str = ""  # where the default comes from when unset (the example TOML leaves it unset)

    @property
    def name(self) -> str:
        return ".".join(self.key)

    @property
    def flag(self) -> str:
        return "--" + ".".join(k.replace("_", "-") for k in self.key)

    @property
    def choices(self) -> tuple | None:
        lits = [a for h in _union(self.hint) if typing.get_origin(h) is typing.Literal for a in typing.get_args(h)]
        return tuple(lits) or None

    @property
    def nullable(self) -> bool:
        return type(None) in _union(self.hint)

    @property
    def base(self) -> type:
        """bool, int, float, str or list (a Literal of strings counts as str)."""
        for h in _union(self.hint):
            if h is type(None):
                continue
            if typing.get_origin(h) is typing.Literal:
                return type(typing.get_args(h)[0])
            return typing.get_origin(h) or h
        return str


def _union(tp: Any) -> tuple:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and is_dataclass(hint) else None


def options(cls: type, _key: tuple[str, ...] = (), _attr: tuple[str, ...] = (),
            _exclude: tuple[str, ...] = ()) -> list[Option]:
    """Every leaf setting of ``cls``, sections walked in field order."""
    out: list[Option] = []
    hints = _hints(cls)
    for f in fields(cls):
        if f.name in _exclude or f.metadata.get("internal"):
            continue
        sub = _section_type(hints[f.name])
        if sub is not None:
            key = _key if f.metadata.get("flatten") else (*_key, f.name)
            derived = {tuple(k.split(".")): v for k, v in f.metadata.get("derived", {}).items()}
            out += [dataclasses.replace(o, derived=derived.get(o.key[len(key):], o.derived))
                    for o in options(sub, key, (*_attr, f.name), f.metadata.get("exclude", ()))]
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(Option((*_key, f.name), (*_attr, f.name), hints[f.name], default, f.metadata.get("help", ""),
                          tuple(f.metadata.get("aliases", ()))))
    return out


def sections(cls: type, _key: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], type]]:
    """The (non-flattened) sections of ``cls`` as (key, dataclass), depth first."""
    out = []
    hints = _hints(cls)
    for f in fields(cls):
        sub = _section_type(hints[f.name])
        if sub is not None and not f.metadata.get("flatten"):
            out.append(((*_key, f.name), sub))
            out += sections(sub, (*_key, f.name))
    return out


# ------------------------------------------------------------------------------------------ values


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
          type(None): "none"}


def coerce(value: Any, hint: Any, where: str, name: str | None = None) -> Any:
    """``value`` checked against a field's annotation; ints widen to float, ``"none"`` is None where allowed."""
    hints = _union(hint)
    lits = [a for h in hints if typing.get_origin(h) is typing.Literal for a in typing.get_args(h)]
    if isinstance(value, SetValue):
        text_ok = str in hints and not lits and not (value.text.lower() in ("none", "null") and type(None) in hints)
        value = value.text if text_ok else value.value
    if lits:
        if value in lits:
            return value
        if not (value is None and type(None) in hints):
            raise ConfigError(f"{where} {value!r}: expected one of {', '.join(map(str, lits))}", name)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in hints):
        if type(None) in hints:
            return None
        raise ConfigError(f"{where}: must not be empty", name)
    for h in hints:
        origin = typing.get_origin(h) or h
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is str and isinstance(value, str):
            return value
        if origin is list and isinstance(value, list):
            item = (typing.get_args(h) or (Any,))[0]
            if item is str and not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: expected a list of strings, got {value!r}", name)
            return list(value)
    names = " or ".join(_WORDS.get(typing.get_origin(h) or h, getattr(h, "__name__", str(h))) for h in hints
                        if typing.get_origin(h) is not typing.Literal)
    raise ConfigError(f"{where}: expected {names}, got {value!r}", name)


def fill(obj: Any, raw: dict[str, Any], source: str = "config", _key: tuple[str, ...] = ()) -> Any:
    """Set ``obj``'s settings from nested dicts (TOML tables), checking every key and value against the
    annotations; unknown keys and sections, and values of the wrong type, raise ``ConfigError`` naming them."""
    cls = type(obj)
    hints = _hints(cls)
    own = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    flat: dict[str, tuple[Any, Any, str]] = {}  # key -> (object holding it, hint, attribute)
    tables: dict[str, Any] = {}
    for name, f in own.items():
        sub = _section_type(hints[name])
        if sub is None:
            flat[name] = (obj, hints[name], name)
        elif f.metadata.get("flatten"):
            inner = getattr(obj, name)
            ih = _hints(sub)
            for g in fields(sub):
                if g.name not in f.metadata.get("exclude", ()) and not g.metadata.get("internal"):
                    flat[g.name] = (inner, ih[g.name], g.name)
        else:
            tables[name] = f
    if not isinstance(raw, dict):
        where = ".".join(_key)
        raise ConfigError(f"{source}: [{where}] must be a table of keys", where or None)
    for k, v in raw.items():
        name = ".".join((*_key, k))
        if k in tables:
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: [{name}] must be a table of keys", name)
            excluded = tables[k].metadata.get("exclude", ())
            for bad in excluded:
                if bad in v:
                    raise ConfigError(f"{source}: '{name}.{bad}' is not a setting here (set for you); remove it",
                                      f"{name}.{bad}")
            fill(getattr(obj, k), v, source, (*_key, k))
        elif k in flat:
            holder, hint, attr = flat[k]
            where = ("--" + ".".join(p.replace("_", "-") for p in (*_key, k)) if source == COMMAND_LINE
                     else f"{source}: '{name}'" if source else name)
            setattr(holder, attr, coerce(v, hint, where, name))
        else:
            if isinstance(v, dict) and tables:
                raise ConfigError(f"{source}: unknown section [{name}]; expected one of "
                                  f"{', '.join('.'.join((*_key, t)) for t in tables)}", name)
            prefix = ": ".join(p for p in (source, ".".join(_key)) if p)
            raise ConfigError(f"{prefix + ': ' if prefix else ''}unknown key '{k}'"
                              f"{f' ({name!r})' if _key else ''}; known keys: {', '.join(sorted(flat))}"
                              + (f" and the tables {', '.join(tables)}" if tables else ""), name)
    return obj


def build(cls: type, raw: dict[str, Any], source: str = "config", validate: bool = True) -> Any:
    """A ``cls`` from nested dicts (defaults for what is missing), validated by its ``validate()``."""
    obj = fill(cls(), raw, source)
    if validate and hasattr(obj, "validate"):
        obj.validate()
    return obj


def to_raw(obj: Any) -> dict[str, Any]:
    """The settings of ``obj`` as the nested dicts ``build`` takes (flattened groups flattened)."""
    out: dict[str, Any] = {}
    for o in options(type(obj)):
        v: Any = obj
        for a in o.attr:
            v = getattr(v, a)
        target = out
        for k in o.key[:-1]:
            target = target.setdefault(k, {})
        target[o.key[-1]] = list(v) if isinstance(v, list) else v
    return out


# ------------------------------------------------------------------------------------------ --set


def parse_value(text: str) -> Any:
    """A TOML value (``7``, ``0.2``, ``true``, ``["a", "b"]``, ``"x"``); a bare word is a string."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


class SetValue:
    """A ``--set`` value that TOML read as a number, boolean or date, with the text it was written as: a
    string setting takes the text (``--set data.split=2024`` is the split "2024"), any other the value."""

    __slots__ = ("value", "text")

    def __init__(self, value: Any, text: str) -> None:
        self.value, self.text = value, text

    def __repr__(self) -> str:
        return repr(self.value)


def plain(raw: Any) -> Any:
    """Nested dicts with every ``SetValue`` replaced by its value (for JSON)."""
    if isinstance(raw, dict):
        return {k: plain(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [plain(v) for v in raw]
    return raw.value if isinstance(raw, SetValue) else raw


def parse_set(text: str) -> tuple[list[str], Any]:
    """``key=value`` or ``section.key=value`` -> (key path, value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value (e.g. lr=3e-5 or filter.relative_margin=0.2)")
    lhs, rhs = text.split("=", 1)
    path = [p.strip() for p in lhs.split(".")]
    if not all(path):
        raise ConfigError(f"--set {text!r}: expected key=value (e.g. lr=3e-5 or filter.relative_margin=0.2)")
    return path, parse_value(rhs)


def apply_set(raw: dict[str, Any], text: str) -> dict[str, Any]:
    """Apply one ``--set a[.b[.c]]=value`` to nested dicts, creating the tables on the way."""
    path, value = parse_set(text)
    if not isinstance(value, str | list | dict):
        value = SetValue(value, text.split("=", 1)[1].strip())
    target = raw
    for part in path[:-1]:
        nxt = target.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {text!r}: '{part}' is a value, not a table", part)
        target = nxt
    target[path[-1]] = value
    return raw


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts: ``top``'s keys win, tables merged key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as nested dicts; a missing file or invalid TOML raises ``ConfigError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None


# ------------------------------------------------------------------------------------------ command line


def _flag_type(o: Option):
    def parse(text: str) -> Any:
        if o.nullable and text.strip().lower() in ("none", "null", ""):
            return None
        if o.base is str:
            return text
        if o.base is list:
            return [v.strip() for v in text.split(",") if v.strip()]
        return parse_value(text)  # numbers; checked against the annotation by build()
    parse.__name__ = o.base.__name__
    return parse


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per setting of ``cls`` (``--key`` or ``--section.key``), with its help, choices and default;
    flags not given stay unset, so a TOML file and ``--set`` merge with them (``flag_values``)."""
    for o in options(cls):
        if o.name in skip:
            continue
        shown = "" if o.default is None else f"{','.join(o.default) if isinstance(o.default, list) else o.default}"
        extra = f" (default: {shown or 'unset' if o.default is None or o.default == '' else shown})"
        if o.choices:
            extra = f" {{{', '.join(map(str, o.choices))}}}" + extra
        kw: dict[str, Any] = {"dest": "set:" + o.name, "default": argparse.SUPPRESS, "help": o.help + extra}
        if o.base is bool:
            parser.add_argument(o.flag, *o.aliases, action=argparse.BooleanOptionalAction, **kw)
        else:
            if o.base is list:
                kw["metavar"] = "A,B,..."
            elif o.choices:
                kw["metavar"] = "{" + ",".join(map(str, o.choices)) + "}"
            else:
                kw["metavar"] = {int: "N", float: "X"}.get(o.base, "TEXT") + ("|none" if o.nullable else "")
            parser.add_argument(o.flag, *o.aliases, type=_flag_type(o), **kw)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of ``add_flags`` that were given, as nested dicts."""
    raw: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest.startswith("set:"):
            target = raw
            *head, last = dest[4:].split(".")
            for part in head:
                target = target.setdefault(part, {})
            target[last] = value
    return raw


def command_line_raw(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--config`` TOML, then ``base`` (shortcut flags), then the generated flags, then ``--set``, as nested
    dicts (later ones win)."""
    raw: dict[str, Any] = read_toml(args.config) if getattr(args, "config", None) else {}
    raw = merge(merge(raw, base or {}), flag_values(args))
    for text in getattr(args, "set", None) or []:
        apply_set(raw, text)
    return raw


def from_command_line(cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """The settings of one command: ``command_line_raw`` built into ``cls`` and validated."""
    return build(cls, command_line_raw(args, base), str(getattr(args, "config", None) or COMMAND_LINE))


# ------------------------------------------------------------------------------------------ example TOML


def _toml_value(v: Any) -> str:
    return json.dumps(v)


def example_toml(cls: type, header: list[str] | tuple[str, ...] = ()) -> str:
    """Every setting of ``cls`` with its default and help, as commented TOML (unset fields commented out)."""
    out = [f"# {h}" if h else "#" for h in header]
    if header:
        out.append("")

    def block(opts: list[Option]) -> None:
        for o in opts:
            text = o.help + (f" ({' | '.join(map(str, o.choices))})" if o.choices else "")
            out.append(f"# {text}")
            if o.derived:
                out.append(f"# {o.key[-1]} = (unset: {o.derived})")
            else:
                out.append(f"{o.key[-1]} = {_toml_value(o.default)}" if o.default is not None
                           else f"# {o.key[-1]} = (unset)")

    opts = options(cls)
    top = [o for o in opts if len(o.key) == 1]
    block(top)
    if top:
        out.append("")
    for key, _sub in sections(cls):
        mine = [o for o in opts if o.key[:-1] == key]
        if not mine:
            continue
        out.append(f"[{'.'.join(key)}]")
        block(mine)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------ JSON schema


_JSON = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}


def _leaf_schema(o: Option) -> dict[str, Any]:
    s: dict[str, Any] = {"description": o.help}
    if o.choices:
        s["enum"] = list(o.choices) + ([None] if o.nullable else [])
    else:
        t = _JSON.get(o.base, "string")
        s["type"] = [t, "null"] if o.nullable else t
        if o.base is list:
            s["items"] = {"type": "string"}
    if o.default is not None:
        s["default"] = o.default
    return s


def json_schema(cls: type, title: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings of ``cls`` as a JSON schema (objects per section, no other keys allowed); ``skip``:
    keys the caller sets itself."""
    root: dict[str, Any] = {"title": title, "type": "object", "properties": {}, "additionalProperties": False}
    for o in options(cls):
        if o.name in skip:
            continue
        node = root
        for part in o.key[:-1]:
            node = node["properties"].setdefault(part, {"type": "object", "properties": {},
                                                        "additionalProperties": False})
        node["properties"][o.key[-1]] = _leaf_schema(o)
    return root


def check_choices(obj: Any, source: str = "") -> None:
    """Every ``Literal`` setting of an already built ``obj`` holds one of its choices (for objects made in
    code, not through ``build``); the error names the field."""
    for o in options(type(obj)):
        if not o.choices:
            continue
        v: Any = obj
        for a in o.attr:
            v = getattr(v, a)
        if v not in o.choices and not (v is None and o.nullable):
            where = f"{source}: '{o.name}'" if source else f"'{o.name}'"
            raise ConfigError(f"{where} = {v!r}: expected one of {', '.join(map(str, o.choices))}", o.name)
