"""The catalogue of every known ISP module: the paper's ten, then one module per file of `isp/extra/`.

Adding a module is adding a file to `posisp_dist/isp/extra/` (and its test): the file holds the reference
function, its torch twin and a module-level `SPEC = module_spec(...)` naming both (optionally fused kernels
too). Nothing else is edited: the files are found with `pkgutil.iter_modules`, and from the catalogue come
the config's accepted names, the action space of a config that names the module, the README table and the
tests parametrised over modules.

An extra module is opt-in: the default `isp.modules` is the paper's ten (`DEFAULT_REGISTRY`), so existing
configs, checkpoints and results do not change when a file is added. A config whose modules are all among
the ten never imports an extension file (`registry_for`), so the default path pays no import for them.

Regenerate the README's module table with ``python -m posisp_dist.isp.catalogue README.md``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from posisp_dist.isp import extra
from posisp_dist.isp.registry import DEFAULT_MODULES, DEFAULT_REGISTRY, ModuleSpec, Registry

EXTRA_PACKAGE = extra.__name__
TABLE_START, TABLE_END = "<!-- module table: start -->", "<!-- module table: end -->"


def discover(package: str = EXTRA_PACKAGE) -> tuple[ModuleSpec, ...]:
    """The `SPEC` of every module file of `package` (files starting with `_` skipped), by file name; raises
    naming the file when one has no `ModuleSpec` called SPEC or no torch twin."""
    pkg = importlib.import_module(package)
    found = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        where = f"{package}.{info.name}"
        spec = getattr(importlib.import_module(where), "SPEC", None)
        if not isinstance(spec, ModuleSpec):
            raise TypeError(f"ISP extension {where} must define SPEC = posisp_dist.isp.registry.module_spec(...)")
        if spec.twin is None:
            raise TypeError(f"ISP extension {where} ({spec.name!r}) declares no torch twin (module_spec(twin=...))")
        found.append(spec)
    return tuple(found)


def catalogue_of(package: str) -> Registry:
    """The paper's ten in AdaptiveISP's order, then the modules of `package` (raises on a name clash)."""
    return Registry((*DEFAULT_MODULES, *discover(package)))


@cache
def catalogue() -> Registry:
    """Every known module: the paper's ten, then the modules of `isp/extra/` by file name."""
    return catalogue_of(EXTRA_PACKAGE)


def extra_names() -> tuple[str, ...]:
    """The catalogue's modules beyond the paper's ten: opt-in through `isp.modules`."""
    return catalogue().names[len(DEFAULT_MODULES) :]


def registry_for(names: Sequence[str]) -> Registry:
    """The registry of a config's `isp.modules`, in that order (raises KeyError naming an unknown module).
    Names all among the paper's ten give `DEFAULT_REGISTRY`'s modules without importing any extension."""
    if set(names) <= set(DEFAULT_REGISTRY.names):
        return DEFAULT_REGISTRY.subset(names)
    return catalogue().subset(names)


def markdown_table() -> str:
    """The README's module table: the catalogue, the paper's ten with their default action ids, extras opt-in."""
    return catalogue().markdown_table(opt_in=extra_names())


def readme_with_table(text: str) -> str:
    """`text` with the block between the module-table markers replaced by `markdown_table()`."""
    head, start, rest = text.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not (start and end):
        raise ValueError(f"the README needs the markers {TABLE_START!r} and {TABLE_END!r} around the module table")
    return f"{head}{TABLE_START}\n{markdown_table()}\n{TABLE_END}{tail}"


if __name__ == "__main__":  # python -m posisp_dist.isp.catalogue [README.md]: print, or rewrite the README's table
    if len(sys.argv) > 1:
        readme = Path(sys.argv[1])
        readme.write_text(readme_with_table(readme.read_text()))
    else:
        print(markdown_table())
