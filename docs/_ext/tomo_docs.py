"""Sphinx directives that render reference pages from the code itself, so the docs cannot drift.

``tomo-cli``: the ``--help`` text of ``bluesky-tomo-hpc`` and every subcommand (argparse, as
built by :func:`bluesky_tomo_hpc.cli.main.build_parser`).
``tomo-fields``: a table of a pydantic model's fields (type, default, description), nested
sections flattened to dotted names; ``:env:`` adds the environment variable of each field.
"""

from __future__ import annotations

import argparse
import importlib
import os
import typing
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    out: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases share one parser
                    seen.add(id(sub))
                    out.append((name, sub))
    return out


def _walk(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, str]]:
    pages = [(prefix, parser.format_help())]
    for name, sub in _subparsers(parser):
        pages.extend(_walk(sub, f"{prefix} {name}"))
    return pages


class CliHelp(Directive):
    """Every command's help text, in the order ``--help`` lists them."""

    has_content = False
    option_spec = {"parser": directives.unchanged, "prog": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        factory = _import(self.options.get("parser", "bluesky_tomo_hpc.cli.main.build_parser"))
        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "100"  # stable wrapping, whatever the terminal
        try:
            parser = factory()
            pages = _walk(parser, self.options.get("prog", parser.prog))
        finally:
            if old is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = old
        out: list[nodes.Node] = []
        for title, text in pages:
            out.append(nodes.rubric(text=title))
            out.append(nodes.literal_block(text, text, language="text"))
        return out


def _type_name(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    for noise in ("typing.", "pathlib.", "bluesky_tomo_hpc.engine.params.", "bluesky_tomo_hpc.settings."):
        text = text.replace(noise, "")
    return text.replace("NoneType", "None").replace("<class '", "").replace("'>", "")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is not None:
            value = field.default_factory()
        else:
            return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, os.PathLike):
        return repr(os.fspath(value))
    return repr(value)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _rows(model: type[BaseModel], prefix: str, env_prefix: str | None) -> list[list[str]]:
    rows: list[list[str]] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = _model_in(field.annotation)
        if sub is not None and env_prefix is not None:
            rows.extend(_rows(sub, f"{dotted}.", env_prefix))
            continue
        sub_opt = [a for a in typing.get_args(field.annotation) if _model_in(a)]
        type_text = _type_name(field.annotation)
        if sub_opt:
            type_text = " | ".join(_type_name(a) for a in typing.get_args(field.annotation))
        row = [dotted, type_text, _default(field), field.description or ""]
        if env_prefix is not None:
            row.append(env_prefix + dotted.upper().replace(".", "__"))
        rows.append(row)
    return rows


def _table(header: list[str], rows: list[list[str]], widths: list[int]) -> nodes.table:
    table = nodes.table()
    group = nodes.tgroup(cols=len(header))
    table += group
    for w in widths:
        group += nodes.colspec(colwidth=w)

    def row_node(cells: list[str], literal_first: bool) -> nodes.row:
        row = nodes.row()
        for i, text in enumerate(cells):
            entry = nodes.entry()
            para = nodes.paragraph()
            para += nodes.literal(text, text) if (literal_first and i in (0, 4)) else nodes.Text(text)
            entry += para
            row += entry
        return row

    thead = nodes.thead()
    thead += row_node(header, False)
    group += thead
    tbody = nodes.tbody()
    for r in rows:
        tbody += row_node(r, True)
    group += tbody
    return table


class ModelFields(Directive):
    """A pydantic model's fields as a table, read from the class at build time."""

    required_arguments = 1
    option_spec = {"env": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        model = _import(self.arguments[0])
        env_prefix = self.options.get("env")
        header = ["field", "type", "default", "description"]
        widths = [20, 20, 12, 40]
        if env_prefix is not None:
            header.append("environment variable")
            widths.append(30)
        return [_table(header, _rows(model, "", env_prefix), widths)]


class ExitCodes(Directive):
    """The command line's exit codes, read from ``bluesky_tomo_hpc.cli.errors.EXIT_CODES``."""

    def run(self) -> list[nodes.Node]:
        codes = _import("bluesky_tomo_hpc.cli.errors.EXIT_CODES")
        return [_table(["exit status", "meaning"], [[str(k), v] for k, v in codes.items()], [12, 60])]


def plain_text_bullets(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Docstrings written for people (``  * item`` under a sentence) made valid reStructuredText:
    indented bullets become a list with blank lines around it, instead of a block-quote error."""
    out: list[str] = []
    in_list = False
    for line in lines:
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        bullet = indent > 0 and stripped[:2] in ("* ", "- ")
        if bullet:
            if not in_list and out and out[-1].strip():
                out.append("")
            in_list = True
            out.append(stripped)
        elif in_list and line.strip() and indent > 2:
            out.append("  " + stripped)  # continuation of the item
        else:
            if in_list and line.strip():
                out.append("")
            in_list = False
            out.append(line)
    lines[:] = out


def setup(app: Any) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", plain_text_bullets)
    app.add_directive("tomo-cli", CliHelp)
    app.add_directive("tomo-fields", ModelFields)
    app.add_directive("tomo-exit-codes", ExitCodes)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
