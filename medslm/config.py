"""Typed configs: nested dataclasses filled from a YAML file, then ``--section.key=value`` overrides.

Every entrypoint owns one top-level dataclass whose fields are small dataclasses (sections).
``parse_config(TrainConfig, argv)`` reads ``--config FILE`` (optional), applies the YAML, then the
CLI overrides, converting each value to the field's annotated type. Unknown sections or keys,
values of the wrong type, non-finite numbers (``nan``, ``inf``) and values outside a ``Literal``
are a :class:`ConfigError` naming the key and where it came from, raised before anything
expensive happens.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names key and source."""


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert ``value`` (from YAML, or a CLI string) to the annotated type ``tp``."""
    optional, inner = _is_optional(tp)
    from_cli = isinstance(value, str) and source.startswith("command line")
    if optional:
        if value is None or (from_cli and value.lower() in ("null", "none", "")):
            return None
        tp = inner
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        for choice in allowed:
            if value == choice or (from_cli and str(choice) == value):
                return choice
            if isinstance(choice, bool) and from_cli and value.lower() == str(choice).lower():
                return choice
        raise ConfigError(f"{source}: '{key}' must be one of {list(allowed)}, got {value!r}")
    if origin in (list, tuple):
        (item_tp, *_rest) = get_args(tp) or (str,)
        if from_cli:
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()] if value else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif isinstance(value, (str, int, float)):
            items = [value]
        else:
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_convert(v, item_tp, key, source) for v in items]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
    if tp is float:
        number: float | None = None
        try:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                number = float(value)
            elif isinstance(value, str):
                number = float(value)
        except ValueError:
            pass
        except OverflowError:  # an integer of hundreds of digits
            raise ConfigError(f"{source}: '{key}' must be a finite number, got an integer of {len(str(value))} digits") from None
        if number is None:
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        if not math.isfinite(number):  # nan and inf parse as floats, and would train to NaN with exit 0
            raise ConfigError(f"{source}: '{key}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
    raise ConfigError(f"{source}: '{key}' has an unsupported type {tp!r}")


def _section_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _apply(cfg: Any, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        hints = _section_types(type(obj))
        if part not in hints:
            path = ".".join(parts[: i + 1])
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{source}: unknown key '{path}' (known here: {known})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(hints[part]):
                raise ConfigError(f"{source}: '{dotted}' is a section; set one of its keys")
            setattr(obj, part, _convert(value, hints[part], dotted, source))
        else:
            child = getattr(obj, part)
            if not dataclasses.is_dataclass(child):
                raise ConfigError(f"{source}: '{'.'.join(parts[: i + 1])}' is not a section")
            obj = child


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def apply_mapping(cfg: Any, tree: dict[str, Any], source: str) -> None:
    """Apply a nested mapping (a parsed YAML file, or a saved config) onto ``cfg``."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    for key, value in _flatten(tree):
        _apply(cfg, key, value, source)


def load_yaml(path: str | Path) -> dict[str, Any]:
    return _load_yaml_text(path)[0]


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error: PyYAML keeps the last,
    so a second ``train:`` section silently dropped every key of the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):  # an unhashable key: safe_load's own error names it
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.name}:line {line}: key {key!r} is given twice in one mapping (first at line {seen[key]}); "
                                  "the first would be dropped: merge them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_yaml_text(path: str | Path) -> tuple[dict[str, Any], str]:
    """The parsed file and the text it was parsed from (one read)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    loader = _UniqueKeyLoader(text)
    loader.name = str(p)
    try:
        tree = loader.get_single_data() or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:line {mark.line + 1}" if mark is not None else str(p)
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{where}: not valid YAML: {what}") from None
    finally:
        loader.dispose()
    return tree, text


def option_pairs(argv: list[str]) -> list[tuple[str, str]]:
    """``--key=value`` and ``--key value`` as ``(key, value)`` pairs, in order."""
    pairs: list[tuple[str, str]] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: unexpected argument {arg!r}; use --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = body, args[i + 1]
            i += 1
        else:
            raise ConfigError(f"command line: {arg!r} needs a value (--{body}=VALUE)")
        pairs.append((key, value))
        i += 1
    return pairs


def parse_config(cls: type[T], argv: list[str], default_file: str | Path | None = None) -> T:
    """Build ``cls`` from ``--config FILE`` (or ``default_file``) and ``--a.b=value`` overrides."""
    cfg = cls()
    overrides: list[tuple[str, str]] = []
    config_file: str | None = None
    for key, value in option_pairs(argv):
        if key == "config":
            config_file = value
        else:
            overrides.append((key, value))
    file_to_load = config_file or (str(default_file) if default_file else None)
    if file_to_load:
        apply_mapping(cfg, load_yaml(file_to_load), str(file_to_load))
    for key, value in overrides:
        _apply(cfg, key, value, f"command line (--{key})")
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# The last line of every saved config: a file cut at a line boundary is still valid YAML, and
# would otherwise load with defaults for every key it lost.
END_MARKER = "# end of medslm config"


def save_config(cfg: Any, path: str | Path) -> Path:
    from medslm.files import write_text

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    return write_text(p, text + END_MARKER + "\n")


def load_saved_config(cls: type[T], path: str | Path) -> T:
    """Read back a config written by :func:`save_config` (same validation as a YAML file).

    A file without its end line that also lacks keys is refused (truncated): its missing keys would
    silently take today's defaults. One with every key but no end line (hand-written, or saved by
    an older medslm) loads."""
    cfg = cls()
    tree, text = _load_yaml_text(path)  # one read: the end line is looked for in the text parsed
    apply_mapping(cfg, tree, str(path))
    if END_MARKER not in text.splitlines():
        missing = sorted(set(k for k, _ in _flatten(to_dict(cfg))) - set(k for k, _ in _flatten(tree)))
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ConfigError(
                f"{path}: truncated? it has no '{END_MARKER}' line and lacks {', '.join(missing[:3])}{more}, "
                "which would take defaults; restore the file (checkpoints/step-*/config.yaml holds a copy)"
            )
    return cfg


def field_docs(cls: type) -> dict[str, str]:
    """One line of documentation per field of dataclass ``cls``, read from its source: the ``#``
    comment ending the field's line, else the ``#`` comment lines right above it."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    src = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    docs: dict[str, str] = {}
    body = ast.parse(src).body[0]
    for node in getattr(body, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        if end in comments:
            docs[node.target.id] = comments[end]
            continue
        above, line = [], node.lineno - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        if above:
            docs[node.target.id] = " ".join(above)
    return docs


def _type_name(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    origin = get_origin(inner)
    if origin is Literal:
        name = "|".join(str(a).lower() if isinstance(a, bool) else str(a) for a in get_args(inner))
    elif origin in (list, tuple):
        (item, *_rest) = get_args(inner) or (str,)
        name = f"list of {getattr(item, '__name__', str(item))}, comma-separated"
    else:
        name = {bool: "true|false", int: "int", float: "float", str: "str"}.get(inner, str(inner))
    return f"{name} or null" if optional else name


def _default_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "(empty)"
    return str(value)


def config_keys(cls: type) -> list[tuple[str, str, str, str]]:
    """``(--section.key, type, default, doc)`` for every key of the nested config ``cls``."""
    root = cls()
    out = []
    for section in dataclasses.fields(root):
        sec_obj = getattr(root, section.name)
        hints = get_type_hints(type(sec_obj))
        docs = field_docs(type(sec_obj))
        for f in dataclasses.fields(sec_obj):
            out.append((f"{section.name}.{f.name}", _type_name(hints[f.name]), _default_text(getattr(sec_obj, f.name)), docs.get(f.name, "")))
    return out


def config_help(cls: type) -> str:
    """Every key of ``cls`` with its type, default and one line of doc, grouped by section;
    generated from the dataclasses, so it cannot drift from what the parser accepts."""
    root = cls()
    lines = ["Config keys (YAML sections, or --section.key=value on the command line):"]
    current = None
    for key, tp, default, doc in config_keys(cls):
        section = key.split(".")[0]
        if section != current:
            current = section
            sec_doc = (type(getattr(root, section)).__doc__ or "").replace("``", "").strip().splitlines()
            lines.append(f"\n{section}:" + (f"  {sec_doc[0]}" if sec_doc and not sec_doc[0].startswith(type(getattr(root, section)).__name__ + "(") else ""))
        lines.append(f"  --{key}={default}  [{tp}]")
        lines.append(f"      {doc}")
    return "\n".join(lines)


def parse_ratio(text: str) -> tuple[int, int]:
    """``"10:3"`` -> ``(10, 3)``; both parts non-negative integers, not both zero."""
    parts = str(text).split(":")
    if len(parts) != 2 or not all(re.fullmatch(r"[0-9]+", p.strip()) for p in parts):  # ASCII: "²".isdigit() is True
        raise ConfigError(f"ratio must look like EN:KO with integers, e.g. 7:3; got {text!r}")
    en, ko = int(parts[0]), int(parts[1])
    if en == 0 and ko == 0:
        raise ConfigError(f"ratio {text!r}: at least one side must be positive")
    return en, ko


__all__ = [
    "ConfigError",
    "apply_mapping",
    "config_help",
    "config_keys",
    "field_docs",
    "load_saved_config",
    "load_yaml",
    "option_pairs",
    "parse_config",
    "parse_ratio",
    "save_config",
    "to_dict",
]
