"""Griffe extensions for this site (mkdocs.yml loads both; ``exclude_docs`` keeps this file off the site).

* :class:`InstalledSubpackages`: ``[tool.setuptools.package-dir]`` installs the repository's
  top-level ``models/`` as ``mirrorgrad_jax.models``. Python finds it through the install's
  import hook (the editable finder), but griffe reads the source tree, where
  ``mirrorgrad_jax/`` has no ``models`` folder, so ``::: mirrorgrad_jax.models`` would not
  resolve. For each subpackage named in its ``packages`` option, this asks the import system
  where the subpackage's source is and, once griffe has loaded the parent package, visits
  that folder (statically, as griffe visits the rest) and attaches it under its installed
  name. No file is moved. (Locating it imports the parent package, ``mirrorgrad_jax``.)
* :class:`DocstringMarkup`: two habits of the docstrings that Markdown and griffe's Google
  parser do not read as meant. Sphinx roles (``:func:`~mirrorgrad_jax.graph.propagate```)
  become inline code that links to the object's API entry when the site has one (an
  *optional* autorefs reference: a target the site does not document, such as
  ``jax.lax.top_k``, stays plain code instead of failing the strict build). And a docstring
  that opens with a section title and lists its items flush with it (the model configs'
  docstrings start with ``Attributes:``) gets its items indented, so that griffe parses the
  section. Only the text griffe renders changes; the source files are left alone.
"""

from __future__ import annotations

import html
import importlib.util
import pathlib
import re
from typing import Any

import griffe


class InstalledSubpackages(griffe.Extension):
    """Attaches installed subpackages whose source lives outside their parent's folder."""

    def __init__(self, packages: list[str]) -> None:
        super().__init__()
        self.packages = list(packages)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for dotted in self.packages:
            parent_path, _, name = dotted.rpartition(".")
            if parent_path.split(".", 1)[0] != pkg.name:
                continue
            parent = loader.modules_collection.get_member(parent_path)
            if name in parent.members:  # a regular install: griffe found it in place
                continue
            spec = importlib.util.find_spec(dotted)
            if spec is None or not spec.submodule_search_locations:
                raise griffe.GriffeError(f"{dotted} is not an installed package")
            folder = pathlib.Path(next(iter(spec.submodule_search_locations)))
            loader.expand_exports(self._attach(name, folder, parent, loader))

    on_package_loaded = on_package  # the same hook under griffe 1.x's name

    def _attach(self, name: str, folder: pathlib.Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
        """Visits the package in ``folder`` and its modules and subpackages, as ``parent.name``."""
        module = self._visit(name, folder / "__init__.py", parent, loader)
        parent.set_member(name, module)
        for path in sorted(folder.iterdir()):
            if path.suffix == ".py" and path.stem != "__init__":
                module.set_member(path.stem, self._visit(path.stem, path, module, loader))
            elif path.is_dir() and (path / "__init__.py").is_file():
                self._attach(path.name, path, module, loader)
        return module

    @staticmethod
    def _visit(name: str, path: pathlib.Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
        code = path.read_text(encoding="utf-8-sig")
        loader.lines_collection[path] = code.splitlines(keepends=False)
        return griffe.visit(
            name,
            filepath=path,
            code=code,
            extensions=loader.extensions,
            parent=parent,
            docstring_parser=loader.docstring_parser,
            docstring_options=loader.docstring_options,
            lines_collection=loader.lines_collection,
            modules_collection=loader.modules_collection,
        )


_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(?P<text>[^`]+)`")
_TITLED = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")


def _target_path(obj: griffe.Object, target: str) -> str:
    """The dotted path a role's target names, as seen from the docstring of ``obj``."""
    if target.startswith("."):  # relative: the module's own members first, then its package's
        module = obj.module
        candidates = [f"{module.path}{target}"]
        if module.parent is not None:
            candidates.append(f"{module.parent.path}{target}")
        for candidate in candidates:
            try:
                obj.modules_collection.get_member(candidate)
            except (KeyError, ValueError):
                continue
            return candidate
        return candidates[0]
    head, _, rest = target.partition(".")
    try:
        resolved = obj.resolve(head)
    except griffe.NameResolutionError:
        return target
    return f"{resolved}.{rest}" if rest else resolved


def _replace_roles(obj: griffe.Object, text: str) -> str:
    def one(match: re.Match) -> str:
        body = match["text"]
        titled = _TITLED.match(body)
        if titled:
            title, target = titled["title"], titled["target"]
        else:
            target = body
            title = body[1:].rpartition(".")[2] if body.startswith("~") else body
        target = target.lstrip("~")
        identifier = html.escape(_target_path(obj, target), quote=True)
        return f'<autoref identifier="{identifier}" optional><code>{html.escape(title)}</code></autoref>'

    return _ROLE.sub(one, text)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


_SECTION_TITLE = re.compile(r"^(Attributes|Args|Arguments|Parameters|Returns|Raises|Yields|Examples):$")


def _indent_leading_section(text: str) -> str:
    """A docstring opening with a section title: its first block (up to a blank line) indented under the title."""
    lines = text.split("\n")
    if len(lines) < 2 or not _SECTION_TITLE.match(lines[0]) or not lines[1].strip() or lines[1][0].isspace():
        return text
    end = next((i for i, line in enumerate(lines) if i and not line.strip()), len(lines))
    return "\n".join([lines[0], *("  " + line for line in lines[1:end]), *lines[end:]])


class DocstringMarkup(griffe.Extension):
    """Rewrites every docstring of a loaded package: leading sections indented, Sphinx roles as optional autorefs."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = _replace_roles(obj, _indent_leading_section(obj.docstring.value))

    on_package_loaded = on_package  # the same hook under griffe 1.x's name
