"""Topology file -> resolved Lab: read YAML, validate (schema.py), plan addresses (plan.py).

Every problem becomes one TopologyError(file, where, problem) whose message is a single line that
names the file, the dotted path of the field, and what is wrong with it.
"""

from __future__ import annotations

import difflib
import stat
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vpnlab.errors import TopologyError
from vpnlab.topology import plan
from vpnlab.topology.model import Lab
from vpnlab.topology.schema import TopologySpec, check_lab_name


def load_topology(path: str | Path, *, name: str | None = None) -> Lab:
    """Load, validate and plan a topology file. `name` overrides the lab name (two labs from one file)."""
    file = str(path)
    data = read_yaml(path)
    spec = validate(file, data)
    if name is not None:
        try:
            check_lab_name(name)
        except ValueError as e:
            raise TopologyError(file, "name", str(e)) from None
        spec = spec.model_copy(update={"name": name})
    return plan.plan_lab(spec, Path(path), file)


# --- YAML -----------------------------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, mapping: yaml.MappingNode, key: str, first: int, second: int) -> None:
        super().__init__(key)
        self.mapping, self.key, self.first, self.second = mapping, key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys itself
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(node, str(key), seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _path_to(root: yaml.Node, target: yaml.Node) -> list[str] | None:
    """Dotted path of `target` inside the composed document, for error messages."""
    if root is target:
        return []
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            sub = _path_to(v, target)
            if sub is not None:
                return [str(k.value)] + sub
    elif isinstance(root, yaml.SequenceNode):
        for i, v in enumerate(root.value):
            sub = _path_to(v, target)
            if sub is not None:
                return [str(i)] + sub
    return None


MAX_YAML_NODES = 100_000
MAX_FILE_BYTES = 1 << 20


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds once every alias is expanded, counting stops just past
    MAX_YAML_NODES. A few nested anchors (a "billion laughs") would otherwise make validation and
    error messages walk and print an exponentially large value."""
    count, stack = 0, [root]
    while stack and count <= MAX_YAML_NODES:
        node = stack.pop()
        count += 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return count


def read_yaml(path: str | Path) -> Any:
    file = str(path)
    p = Path(path)
    try:
        if stat.S_ISCHR(p.stat().st_mode) or stat.S_ISBLK(p.stat().st_mode):
            raise TopologyError(file, "", "is a device, not a topology file")
        with p.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise TopologyError(file, "", f"larger than {MAX_FILE_BYTES // 1024} KiB: not a topology file")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise TopologyError(file, "", "file not found") from None
    except IsADirectoryError:
        raise TopologyError(file, "", "is a directory, not a topology file") from None
    except UnicodeDecodeError:
        raise TopologyError(file, "", "not a text file (not valid UTF-8)") from None
    except OSError as e:
        raise TopologyError(file, "", f"cannot read: {e.strerror or e}") from None
    if not text.strip():
        raise TopologyError(file, "", "file is empty")
    loader = UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise TopologyError(file, "", "file is empty (only comments)")
        if _expanded_size(root) > MAX_YAML_NODES:
            raise TopologyError(
                file, "", f"aliases expand to more than {MAX_YAML_NODES} values; a topology needs far fewer"
            )
        data = loader.construct_document(root)
    except _DuplicateKey as e:
        where = ".".join(_path_to(root, e.mapping) or [])
        what = "node" if where == "nodes" else "key"
        raise TopologyError(
            file, where, f"duplicate {what} {e.key!r} (lines {e.first} and {e.second})"
        ) from None
    except yaml.YAMLError as e:
        raise TopologyError(file, "", f"not valid YAML: {_yaml_problem(e)}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise TopologyError(
            file, "", f"expected a mapping of keys (name, secret, nodes, ...), got {_kind(data)}"
        )
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"{e.problem or e.context or 'syntax error'}{where}"
    return str(e).splitlines()[0]


# --- validation -----------------------------------------------------------------------------------


def validate(file: str, data: Any) -> TopologySpec:
    try:
        return TopologySpec.model_validate(data)
    except ValidationError as e:
        raise pydantic_to_topology_error(file, e) from None


_MISSING_HINTS = {
    "secret": " (give secret: {psk: ...} or secret: {psk_file: file})",
    "role": " (hub, branch, gateway or host)",
    "nodes": " (a mapping of node name to node)",
}

_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "a whole number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "literal_error": None,
}


def pydantic_to_topology_error(file: str, exc: ValidationError) -> TopologyError:
    errors = exc.errors(include_url=False)
    # A typo explains the errors that follow it, so unknown keys are reported first.
    errors.sort(key=lambda err: err["type"] != "extra_forbidden")
    err = errors[0]
    loc = [str(x) for x in err["loc"] if x != "[key]"]
    etype = err["type"]
    if etype == "extra_forbidden":
        key = loc[-1]
        valid = _fields_at(TopologySpec, loc[:-1])
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
        return TopologyError(file, ".".join(loc[:-1]), f"unknown key {key!r} ({hint})")
    if etype == "missing":
        hint = _MISSING_HINTS.get(loc[-1], "")
        return TopologyError(file, ".".join(loc[:-1]), f"missing required key {loc[-1]!r}{hint}")
    if etype == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return TopologyError(
            file, ".".join(loc), f"{err['input']!r} is not valid (expected {expected})"
        )
    if etype in _TYPE_WORDS:
        return TopologyError(
            file, ".".join(loc), f"expected {_TYPE_WORDS[etype]}, got {_kind(err['input'])}"
        )
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if etype == "too_short" and not err["input"]:
        msg = "must not be empty"
    elif etype in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        msg = f"{msg[0].lower()}{msg[1:]}, got {err['input']!r}"
    else:
        msg = msg[0].lower() + msg[1:] if msg and not msg[:2].isupper() else msg or etype  # keep "IKE ..."
    return TopologyError(file, ".".join(loc), msg)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Valid keys of the model found at `loc` (walking fields, dict values and list items)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) in (dict, list):
            current = typing.get_args(current)[-1]  # dict value type / list item type
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    """`X | None` -> X (only unions with a single non-None member)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return tp


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"
