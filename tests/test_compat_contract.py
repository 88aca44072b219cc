"""The libraries' internals the seam relies on are there, with the shape it expects.

Each entry of a `pipeline/compat/*.py` module's ``CONTRACT`` is checked against the installed
library: its owner (module or class) imports; a method takes the parameters named, in that
order; an attribute set in ``__init__`` (``on_instance``) is assigned on ``self`` in the source
of the class or one of its bases; anything else is an attribute of the owner (or, for a flag
another module reads, appears in that module's source). Run it after moving a pin: it names
each name that moved, in seconds.

The seam's patches keep the patched function's signature (``functools.wraps``), so the check
sees the library's own even after a test in the same run installed them.

Imports only the libraries: the contract lists are read from the seam's source, so a library
that lost a class the seam subclasses still gets every entry checked, not one ImportError.
Runs in any virtualenv that has the libraries and pytest (no app dependency).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEAM = ROOT / "pipeline" / "compat"
sys.path.insert(0, str(ROOT))

from pipeline.compat import Reliance  # noqa: E402 (dataclass only: imports no library)


def contract_of(module: Path) -> list[Reliance]:
    """The module's ``CONTRACT``, evaluated from its source with its string constants."""
    tree = ast.parse(module.read_text())
    names: dict[str, object] = {"Reliance": Reliance}
    contract = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id == "CONTRACT":
                contract = node.value
            elif isinstance(target, ast.Name):
                try:
                    names[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    continue
    if contract is None:
        return []
    code = compile(ast.Expression(contract), str(module), "eval")
    return eval(code, names)  # the seam's own data: Reliance(...) calls over string constants


CONTRACT = [entry for path in sorted(SEAM.glob("*.py")) for entry in contract_of(path)]


def resolve(dotted: str) -> object:
    """Import ``a.b.C``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(dotted)


def assigned_on_self(cls: type, name: str) -> bool:
    """Whether ``self.<name> = ...`` appears in the source of ``cls`` or a base of it."""
    for klass in inspect.getmro(cls):
        wanted = name
        mangled = f"_{klass.__name__}__"
        if name.startswith(mangled):
            wanted = "__" + name[len(mangled) :]
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and node.attr == wanted
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                return True
    return False


def parameter_names(fn: object) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


def test_the_contract_lists_something_of_each_library():
    assert {entry.library for entry in CONTRACT} >= {"pipecat", "fastrtc", "aiortc", "gradio"}


@pytest.mark.parametrize("entry", CONTRACT, ids=lambda e: e.qualified)
def test_the_library_still_has_it(entry: Reliance):
    try:
        owner = resolve(entry.owner)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{entry.owner} is gone ({entry.library}): {e}")
    if entry.on_instance:
        assert isinstance(owner, type), f"{entry.owner} is not a class"
        assert assigned_on_self(owner, entry.name), (
            f"{entry.qualified}: no `self.{entry.name} = ...` in {entry.owner} or its bases"
        )
        return
    if not hasattr(owner, entry.name):
        assert inspect.ismodule(owner) and entry.name in inspect.getsource(owner), (
            f"{entry.qualified} is gone"
        )
        return
    if entry.params is not None:
        found = parameter_names(getattr(owner, entry.name))
        assert found[: len(entry.params)] == entry.params, (
            f"{entry.qualified} takes {found}, the seam calls it with {entry.params}"
        )


def test_docs_list_every_entry():
    """docs/compat.md has a row per entry (made by ``python -m pipeline.compat``)."""
    doc = (ROOT / "docs" / "compat.md").read_text()
    missing = [e.qualified for e in CONTRACT if f"`{e.qualified}`" not in doc]
    assert not missing, f"docs/compat.md lacks {missing}"
