"""One settings convention (issue 13): each job's settings dataclass generates its command-line flags, its
documented example TOML, ``--set`` and the job service's validation and OpenAPI schema. Every field of every
job must appear in all four, and each of them must route a value to that field."""

from __future__ import annotations

import tomllib
import typing

import pytest

from mining_jobs import settings as S
from mining_jobs.cli import build_parser
from mining_jobs.job_settings import COMMANDS, example, example_path, main, settings_class
from mining_jobs.service import kinds

JOBS = [(c, o) for c in COMMANDS for o in S.options(settings_class(c))]


def _subparser(command: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[command]


def _some_value(o: S.Option):
    """A valid value other than the default, as (python value, command-line text)."""
    if o.choices:
        other = [c for c in o.choices if c != o.default]
        return other[0], str(other[0])
    if o.base is bool:
        return (not o.default), None
    if o.base is int:
        v = (o.default or 0) + 3
        return v, str(v)
    if o.base is float:
        v = (o.default or 0.0) + 0.125
        return v, repr(v)
    if o.base is list:
        return ["x1", "x2"], "x1,x2"
    return "some-text", "some-text"


def _wrong_value(o: S.Option):
    if o.choices:
        return "no-such-choice"
    if o.base in (int, float, bool):
        return "not-a-number"
    return 12345  # str and list fields refuse an integer


def _lookup(d, key):
    for k in key:
        d = d[k]
    return d


def test_every_job_has_settings_with_help_text():
    for command, o in JOBS:
        assert o.help.strip(), f"{command}: {o.name} has no help text"
    assert {c for c, _ in JOBS} == set(COMMANDS)


@pytest.mark.parametrize(("command", "o"), JOBS, ids=[f"{c}:{o.name}" for c, o in JOBS])
def test_every_field_is_a_flag_that_sets_it(command, o):
    p = _subparser(command)
    assert o.flag in p._option_string_actions, f"hardneg {command} has no {o.flag}"
    value, text = _some_value(o)
    if o.base is bool:
        argv = [o.flag if value else "--no-" + o.flag[2:]]
    else:
        argv = [o.flag, text]
    args = p.parse_args(argv + (["--out", "x"] if command == "mine" else []))
    assert _lookup(S.flag_values(args), o.key) == value


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_is_in_the_example_toml_with_its_default(command):
    cls = settings_class(command)
    text = example_path(command).read_text()
    assert text == example(command), f"examples/{command}.toml is stale: python -m mining_jobs.job_settings --write"
    parsed = tomllib.loads(text)
    for o in S.options(cls):
        if o.default is None or o.derived:  # written as a comment: '# key = (unset...)' in its table
            table = "\n[" + ".".join(o.key[:-1]) + "]\n" if len(o.key) > 1 else None
            body = text.split(table, 1)[1].split("\n[", 1)[0] if table else text.split("\n[", 1)[0]
            assert f"# {o.key[-1]} = (unset" in body, (command, o.name)
        else:
            assert _lookup(parsed, o.key) == o.default, (command, o.name)
    # the example is a valid config that builds the defaults
    if command != "iterate":
        assert S.to_raw(S.build(cls, parsed, validate=False)) == S.to_raw(cls())


def test_committed_examples_are_current():
    assert main([]) == 0


@pytest.mark.parametrize(("command", "o"), JOBS, ids=[f"{c}:{o.name}" for c, o in JOBS])
def test_every_field_takes_set_and_refuses_a_wrong_type_by_name(command, o):
    cls = settings_class(command)
    value, _ = _some_value(o)
    raw = S.apply_set({}, f"{o.name}={S._toml_value(value)}")
    obj = S.build(cls, raw, validate=False)
    assert _lookup(S.to_raw(obj), o.key) == value
    with pytest.raises(S.ConfigError) as err:  # a wrong-typed value, as a TOML file or JSON would carry it
        S.build(cls, S.plain(S.apply_set({}, f"{o.name}={S._toml_value(_wrong_value(o))}")), validate=False)
    assert err.value.field == o.name
    if o.base is str and not o.choices:  # on --set a string setting takes the text as written
        assert _lookup(S.to_raw(S.build(cls, S.apply_set({}, f"{o.name}=2024"), validate=False)), o.key) == "2024"


def test_unknown_keys_are_refused_by_name():
    for command in COMMANDS:
        with pytest.raises(S.ConfigError) as err:
            S.build(settings_class(command), {"no_such_key": 1})
        assert err.value.field == "no_such_key"
    with pytest.raises(S.ConfigError, match="unknown section"):
        S.build(settings_class("mine"), {"bogus": {"x": 1}})


SERVICE = [(k, o) for k in kinds.KINDS for o in S.options(kinds.KINDS[k].settings())]


def _service_props(schema, key):
    node = schema
    for part in key[:-1]:
        node = node["properties"][part]
    return node["properties"]


@pytest.mark.parametrize("kind", list(kinds.KINDS))
def test_the_openapi_schema_of_each_kind_holds_every_field(kind):
    from fastapi.testclient import TestClient

    from mining_jobs.service.server import create_app, kind_schema_name
    from mining_jobs.service.store import SQLiteJobStore

    spec = TestClient(create_app(SQLiteJobStore(_tmp()))).get("/openapi.json").json()
    schema = spec["components"]["schemas"][kind_schema_name(kind)]
    k = kinds.KINDS[kind]
    for o in S.options(k.settings()):
        props = _service_props(schema, o.key)
        if o.name in k.service_sets:
            assert o.key[-1] not in props, f"{kind}: {o.name} is set by the service, not documented as a key"
            continue
        assert o.key[-1] in props, (kind, o.name)
        assert props[o.key[-1]]["description"] == o.help
        if o.choices:
            assert set(props[o.key[-1]]["enum"]) - {None} == set(o.choices)


def _tmp():
    import tempfile

    return tempfile.mkdtemp(prefix="hardneg-settings-")


@pytest.mark.parametrize(("kind", "o"), SERVICE, ids=[f"{k}:{o.name}" for k, o in SERVICE])
def test_the_service_validates_every_field_by_name(kind, o):
    """A wrong-typed value of any field is refused by the service's validation, naming that field; a field the
    service sets itself is refused too."""
    raw = S.plain(S.apply_set({}, f"{o.name}={S._toml_value(_wrong_value(o))}"))  # as JSON carries it
    with pytest.raises(S.ConfigError) as err:
        kinds.resolve(kind, raw)
    assert err.value.field == o.name, str(err.value)


def test_literal_choices_come_from_the_annotations():
    from mining_jobs.config import SamplingSection

    hint = typing.get_type_hints(SamplingSection)["strategy"]
    o = next(o for o in S.options(SamplingSection) if o.name == "strategy")
    assert o.choices == typing.get_args(hint) == ("top", "random", "positive-aware", "simans")
    with pytest.raises(S.ConfigError, match="top, random"):
        S.check_choices(SamplingSection(strategy="best"))
