"""MkDocs hook: the configuration reference page, generated from kdgen's pydantic models at every build.

Every section of ``kdgen.config.Config`` (plug-ins' sections included), every key with its type and default,
and the comment written above the key in the source as its meaning: the page cannot drift from the code.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing

from mkdocs.structure.files import File

PAGE = "reference/configuration.md"


def _comments(model: type) -> dict[str, str]:
    """``{field: the comment lines right above it}`` in the class body of ``model`` and its bases."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if cls.__module__.startswith("pydantic") or cls is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        body = ast.parse(source).body[0]
        for node in getattr(body, "body", []):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                above, row = [], node.lineno - 2
                while row >= 0 and lines[row].strip().startswith("#"):
                    above.insert(0, lines[row].strip().lstrip("#").strip())
                    row -= 1
                if above:
                    found[node.target.id] = " ".join(above)
    return found


def _type(annotation: object) -> str:
    text = str(annotation).replace("typing.", "")
    for module in ("kdgen.", "pathlib."):
        text = text.replace(module, "")
    if isinstance(annotation, type):
        text = annotation.__name__
    return text.replace("|", "\\|")


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if hasattr(value, "model_dump"):
        return "(section)"
    return f"`{value!r}`".replace("|", "\\|")


def _table(model: type, prefix: str) -> list[str]:
    notes = _comments(model)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        meaning = (field.description or notes.get(name, "")).replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_type(field.annotation)} | {_default(field)} | {meaning} |")
    return rows


def reference() -> str:
    """The page, in markdown."""
    from kdgen.config import TAGGED_SECTIONS, Config

    lines = ["# Configuration reference", "",
             "Generated from kdgen's pydantic models when these pages are built (`docs/hooks/config_reference.py`): "
             "every key a config file or a `KEY=VALUE` override may set, its type, its default and the comment above "
             "it in the source. What the keys do together is in the [configuration guide](../guide/configuration.md)."
             " `kdgen config [--config FILE] [KEY=VALUE ...]` prints a resolved config.", ""]
    for section, field in Config.model_fields.items():
        annotation = field.annotation
        if section in TAGGED_SECTIONS:
            registry, default = TAGGED_SECTIONS[section]
            lines += [f"## `{section}`", "", f"One of the registered methods, chosen by `{section}.method` "
                      f"(default `{default}`); each owns its keys.", ""]
            for name, model in registry.items():
                doc = inspect.cleandoc(model.__dict__.get("__doc__") or "")
                lines += [f"### `{section}.method: {name}`", "", doc.split("\n\n")[0], ""] + _table(model, f"{section}.")
                lines.append("")
        elif isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            own = inspect.cleandoc(annotation.__dict__.get("__doc__") or "")  # its own, not BaseModel's
            lines += [f"## `{section}`", "", own.split("\n\n")[0], ""] + _table(annotation, f"{section}.") + [""]
        else:
            lines += [f"## `{section}`", "", f"Type {_type(annotation)}, default {_default(field)}.", ""]
    return "\n".join(lines) + "\n"


def on_files(files, config):  # noqa: D103 - the MkDocs hook
    files.append(File.generated(config, PAGE, content=reference()))
    return files
