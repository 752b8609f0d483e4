"""Config mistakes as short messages: each names the key, what is wrong and the fix, in one line.

The rules live in workflow/schemas/config.schema.yaml; jsonschema finds the mistakes and this module says
them in words (an unknown key with the nearest known one, a quoted number, a value outside its choices),
instead of a schema dump. `fill_defaults` sets the schema's defaults, as Snakemake's `validate` did.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

from virnucflow.errors import InputError

TYPE_WORDS = {"integer": "a whole number", "number": "a number", "boolean": "true or false", "string": "text",
              "array": "a list", "object": "keys under it", "null": "nothing"}
YES_NO = {"yes", "no", "true", "false", "on", "off", "y", "n", "1", "0"}


def load_schema(path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def load_config_file(path) -> dict:
    """A YAML config file; a syntax error is one line with its line and column."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the config file ({exc.strerror}): fix the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise InputError(f"{path}{where}: YAML syntax error ({problem}): check the indentation (spaces, "
                         "no tabs) and the quotes there") from None
    return {} if data is None else data


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "empty (null)"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a set of keys"
    return str(value)


def _choices(values) -> str:
    seen = []
    for v in values:
        if str(v) not in seen:
            seen.append(str(v))
    return ", ".join(seen)


def _is_number(text: str, integer: bool) -> bool:
    try:
        number = float(text)
        return number == int(number) or not integer
    except (ValueError, OverflowError):
        return False


def _all_keys(schema: dict, prefix: str = "") -> dict:
    """{key: dotted path} of every key the schema allows, at any depth."""
    out = {}
    for name, sub in (schema.get("properties") or {}).items():
        out.setdefault(name, prefix + name)
        if isinstance(sub, dict) and "properties" in sub:
            for k, v in _all_keys(sub, f"{prefix}{name}.").items():
                out.setdefault(k, v)
    return out


def _unknown_keys(error, schema, where: str) -> list[str]:
    known = list((error.schema.get("properties") or {}))
    section = f"under {where}" if where else "in config"
    everywhere = _all_keys(schema)
    messages = []
    for name in error.instance:
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6) or \
            [k for k in known if k.startswith(str(name)) or str(name).startswith(k)][:1]
        if close:
            fix = f"did you mean `{close[0]}`?"
        elif str(name) in everywhere:
            home = everywhere[str(name)]
            fix = f"it belongs under {home.rsplit('.', 1)[0]}: (`{home}`)" if "." in home else \
                f"it belongs at the top level, not under {where}:"
        else:
            fix = "remove it (config/README.md lists the keys)"
        messages.append(f"unknown key `{name}` {section}: {fix}")
    return messages


def _unquoted(text: str) -> str:
    number = float(text)
    return str(int(number)) if number == int(number) else str(number)


def _type_fix(value, wanted: list[str], key: str) -> str:
    if isinstance(value, str) and ("integer" in wanted or "number" in wanted) and _is_number(value, "number" not in wanted):
        return f"{key} is the string {value!r}: write {_unquoted(value)} without quotes"
    if isinstance(value, str) and "array" in wanted:
        return f"{key} is the string {value!r}: write a list in brackets, e.g. [{value}]"
    if isinstance(value, str) and "boolean" in wanted and value.strip().lower() in YES_NO:
        return f"{key} is the string {value!r}: write true or false, without quotes"
    if value is None and "object" in wanted:
        return f"{key} has nothing under it: add keys under {key}: or remove the line"
    words = " or ".join(TYPE_WORDS.get(t, t) for t in wanted)
    return f"{key} is {_describe(value)}: give {words}"


def _message(error, schema) -> list[str]:
    """One jsonschema error in words: a list of one-line messages (an unknown-keys error names each key)."""
    key = _key(error.absolute_path) or "the config"
    kind, value, rule = error.validator, error.instance, error.validator_value
    description = (error.schema.get("description") if isinstance(error.schema, dict) else None) or ""
    if kind == "additionalProperties":
        return _unknown_keys(error, schema, _key(error.absolute_path))
    if "propertyNames" in error.schema_path:
        return [f"{key} has the key {value!r}: its keys are {_choices(rule)}"]
    if kind == "type":
        wanted = rule if isinstance(rule, list) else [rule]
        if key == "the config":
            return ["the config is not a set of `key: value` lines: see config/demo.yaml for the layout"]
        return [_type_fix(value, wanted, key)]
    if kind == "enum":
        if isinstance(value, str) and value in {str(v) for v in rule if not isinstance(v, str)}:
            return [f"{key} is the string {value!r}: write {value} without quotes"]
        return [f"{key} is {value!r}: allowed values are {_choices(rule)}"]
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        bound = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most",
                 "exclusiveMaximum": "less than"}[kind]
        whole = "a whole number" if isinstance(value, int) and error.schema.get("type") == "integer" else "a number"
        return [f"{key} is {value}: give {whole} {bound} {rule}"]
    if kind == "required":
        name = error.message.split("'")[1] if "'" in error.message else "?"
        section = f"under {key}" if key != "the config" else "in the config"
        hint = ((error.schema.get("properties") or {}).get(name) or {}).get("description", "see config/README.md")
        return [f"missing key `{name}` {section}: add it ({hint})"]
    if kind == "minProperties":
        return [f"{key} is empty: give {description or 'at least one entry'}"]
    if kind == "minLength":
        return [f"{key} is empty: give {description or 'a value'}"]
    if kind == "pattern":
        return [f"{key} is {value!r}: expected {description or 'text matching ' + rule}"]
    return [f"{key}: {error.message[:160]}"]


def schema_problems(instance, schema: dict) -> list[str]:
    """Every mistake of `instance` against `schema`, each one line."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=lambda e: [str(p) for p in e.path])
    return [m for e in errors for m in _message(e, schema)]


def fill_defaults(instance: dict, schema: dict) -> dict:
    """Set the schema's defaults for the keys that are not given, in nested sections too (in place)."""
    for name, sub in (schema.get("properties") or {}).items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(name), dict) and "properties" in sub:
            fill_defaults(instance[name], sub)
    return instance


def config_problems(config, schema: dict) -> list[str]:
    """The config's mistakes (schema, the classifier of chunk_size, the embedding settings), one line each."""
    problems = schema_problems(config, schema)
    if problems:
        return problems
    classifiers = config["models"]["classifiers"]
    size = config["chunk_size"]
    if str(size) not in {str(k) for k in classifiers}:
        problems.append(f"models.classifiers has no classifier for chunk_size {size}: add "
                        f"\"{size}\": models/{size}_model.pth under it (`virnucflow fetch-models` fetches it)")
    from virnucflow.embedding_settings import EmbeddingSettings

    try:
        EmbeddingSettings.from_config(config)
    except InputError as exc:
        problems.append(str(exc))
    return problems
