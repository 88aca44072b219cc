"""Nothing outside `pipeline/compat/` touches a third-party library's private names.

The scan walks the AST of every module we ship: pipeline/, ui/, deploy/, bench/ and app.py
(tests/ and testkit/ are left out: they may reach into internals to stage a situation, and
never run in production). Flagged, with file:line:

- `x._name` (one leading underscore, not a dunder) where our code defines no `_name`;
- `self._name` or `def _name` in a class of ours whose third-party ancestors (imported and
  read: their attributes, and the `self._x = ...` in their source) define `_name`: using or
  overriding their private state or hook;
- a name-mangled `_Class__name`, and a private name given as a string
  (`getattr(x, "_name")`, `setattr`, `hasattr`, `x.__dict__.pop("_name")`);
- `from pkg import _name` or `import pkg._mod` for a third-party package;
- a patch: assigning to an attribute of an imported third-party module or class
  (`aioice.ice.Connection.request_received = ...`), or to a known internal that has no
  underscore (Starlette's `middleware_stack`).

"Ours" is what our code defines outside the seam; the third-party ancestors are imported,
so the scan runs in about a second once pipecat is imported.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("pipeline", "ui", "deploy", "bench", "app.py")
SEAM = ROOT / "pipeline" / "compat"
STRING_ACCESSORS = {"getattr", "setattr", "hasattr", "delattr"}
# Internals of a library that carry no underscore.
UNDERSCORELESS_INTERNALS = {"middleware_stack"}
OURS = {"pipeline", "ui", "deploy", "bench", "app", "testkit", "tests"}


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        try:
            where = self.path.relative_to(ROOT)
        except ValueError:
            where = self.path
        return f"{where}:{self.line}: {self.what}"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name != "_"


def _is_mangled(name: str) -> bool:
    """`_Class__attr`: a name-mangled private attribute reached from outside its class."""
    head, _, tail = name[1:].partition("__")
    return bool(head) and bool(tail)


def _is_third_party(module: str | None, level: int = 0) -> bool:
    if level or not module:
        return False
    top = module.split(".")[0]
    return top not in OURS and top not in sys.stdlib_module_names


def shipped_modules() -> list[Path]:
    files: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        files.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return [f for f in files if SEAM not in f.parents and not f.name.startswith("test_")]


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Subscript):
        return _dotted(node.value)
    return ""


def _imports(tree: ast.Module) -> dict[str, list[str]]:
    """Each name a module binds by importing a third-party package: [module, attribute...]."""
    bound: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _is_third_party(node.module, node.level):
            for alias in node.names:
                bound[alias.asname or alias.name] = [node.module or "", alias.name]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_third_party(alias.name):
                    continue
                if alias.asname:
                    bound[alias.asname] = [alias.name]
                else:
                    bound[alias.name.split(".")[0]] = [alias.name.split(".")[0]]
    return bound


def _resolve(dotted: str, imports: dict[str, list[str]]) -> object | None:
    """The third-party object a dotted expression names, through the module's imports."""
    head, _, rest = dotted.partition(".")
    if head not in imports:
        return None
    module, *attributes = imports[head]
    try:
        target: object = importlib.import_module(module)
        for part in [*attributes, *rest.split(".")]:
            if part:
                target = getattr(target, part)
    except (ImportError, AttributeError):
        return None
    return target


@functools.cache
def private_names_of(cls: type) -> frozenset[str]:
    """The private names a third-party class and its bases define or assign on `self`."""
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        if klass.__module__.split(".")[0] in OURS:
            continue
        names |= {n for n in vars(klass) if _is_private(n)}
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _is_private(node.attr)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
    return frozenset(names)


@dataclass
class OurClass:
    bases: list[str]
    imports: dict[str, list[str]]
    own: set[str] = field(default_factory=set)
    methods: dict[str, int] = field(default_factory=dict)  # private method: its line


class Codebase:
    """Our classes (bases, own private names), and the private names our code defines."""

    def __init__(self, modules: list[Path]) -> None:
        self.classes: dict[str, OurClass] = {}
        self.defined: set[str] = set()
        for path in modules:
            tree = _parse(path)
            self._collect(tree, _imports(tree), None)
        # Assigning a name a third-party base already has does not make it ours.
        for name, cls in self.classes.items():
            self.defined |= cls.own - self.foreign_names(name)

    def _collect(self, node: ast.AST, imports: dict, cls: OurClass | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = cls
            if isinstance(child, ast.ClassDef):
                inner = OurClass([_dotted(b) for b in child.bases], imports)
                self.classes[child.name] = inner
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                self._define(child.name, cls, in_class_body=True)
                if cls is not None and _is_private(child.name) and isinstance(node, ast.ClassDef):
                    cls.methods[child.name] = child.lineno
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                self._define(child.id, cls, in_class_body=isinstance(node, ast.ClassDef))
            elif (
                isinstance(child, ast.Attribute)
                and isinstance(child.ctx, ast.Store)
                and isinstance(child.value, ast.Name)
                and child.value.id in ("self", "cls")
            ):
                self._define(child.attr, cls, in_class_body=True)
            self._collect(child, imports, inner)

    def _define(self, name: str, cls: OurClass | None, in_class_body: bool) -> None:
        if not _is_private(name):
            return
        if cls is not None and in_class_body:
            cls.own.add(name)
        else:
            self.defined.add(name)

    @functools.cache  # noqa: B019 (one Codebase per test run)
    def foreign_names(self, name: str) -> frozenset[str]:
        """Private names the third-party ancestors of our class `name` define."""
        names: set[str] = set()
        todo, seen = [name], set()
        while todo:
            current = todo.pop()
            ours = self.classes.get(current.split(".")[-1])
            if ours is None or current in seen:
                continue
            seen.add(current)
            for base in ours.bases:
                if base.split(".")[-1] in self.classes:
                    todo.append(base)
                    continue
                resolved = _resolve(base, ours.imports)
                if isinstance(resolved, type):
                    names |= private_names_of(resolved)
        return frozenset(names)

    def own_names(self, name: str) -> set[str]:
        """Private names our class `name` and our ancestors of it define themselves."""
        names: set[str] = set()
        todo, seen = [name], set()
        while todo:
            ours = self.classes.get(todo.pop().split(".")[-1])
            if ours is None or id(ours) in seen:
                continue
            seen.add(id(ours))
            names |= ours.own
            todo.extend(ours.bases)
        return names


class _Scan(ast.NodeVisitor):
    def __init__(self, path: Path, code: Codebase, tree: ast.Module) -> None:
        self.path = path
        self.code = code
        self.imports = _imports(tree)
        self.findings: list[Finding] = []
        self._classes: list[str] = []

    def _flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), what))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._classes.append(node.name)
        theirs = self.code.foreign_names(node.name)
        for item in node.body:
            is_def = isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_def and _is_private(item.name) and item.name in theirs:
                self._flag(item, f"overrides a third-party private method {item.name}")
        for mixin in node.bases:
            # A mixin of ours (no third-party base) put before a third-party class.
            ours = self.code.classes.get(_dotted(mixin).split(".")[-1])
            if ours is None or self.code.foreign_names(_dotted(mixin).split(".")[-1]):
                continue
            for name in sorted(set(ours.methods) & theirs):
                self._flag(node, f"mixes in an override of a third-party private method {name}")
        self.generic_visit(node)
        self._classes.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = node.attr
        if _is_private(name):
            self._check_private(node, name)
        if isinstance(node.ctx, ast.Store):
            self._check_patch(node)
        self.generic_visit(node)

    def _check_private(self, node: ast.Attribute, name: str) -> None:
        if _is_mangled(name):
            self._flag(node, f"name-mangled private attribute {name}")
            return
        value = node.value
        if isinstance(value, ast.Name) and value.id in ("self", "cls") and self._classes:
            cls = self._classes[-1]
            if name in self.code.foreign_names(cls):
                self._flag(node, f"inherited third-party private attribute {name}")
                return
            if name in self.code.own_names(cls):
                return
        if name not in self.code.defined:
            self._flag(node, f"third-party private attribute {name}")

    def _check_patch(self, node: ast.Attribute) -> None:
        if node.attr in UNDERSCORELESS_INTERNALS:
            self._flag(node, f"library internal {node.attr} assigned")
            return
        owner = _dotted(node.value)
        resolved = _resolve(owner, self.imports) if owner else None
        if resolved is not None and (inspect.ismodule(resolved) or isinstance(resolved, type)):
            self._flag(node, f"patches {owner}.{node.attr}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if _is_third_party(node.module, node.level):
            if any(_is_private(part) for part in (node.module or "").split(".")):
                self._flag(node, f"import from a private module {node.module}")
            for alias in node.names:
                if _is_private(alias.name):
                    self._flag(node, f"private import {alias.name} from {node.module}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _is_third_party(alias.name) and any(_is_private(p) for p in alias.name.split(".")):
                self._flag(node, f"import of a private module {alias.name}")

    def visit_Call(self, node: ast.Call) -> None:
        name = _string_accessed(node)
        if name and (name not in self.code.defined or _is_mangled(name)):
            self._flag(node, f"private name {name!r} given as a string")
        self.generic_visit(node)


def _string_accessed(node: ast.Call) -> str | None:
    """The private name in `getattr(x, "_n")`, `setattr(...)`, `x.__dict__.pop("_n")`."""
    func = node.func
    if isinstance(func, ast.Name) and func.id in STRING_ACCESSORS and len(node.args) >= 2:
        literal = node.args[1]
    elif (
        isinstance(func, ast.Attribute)
        and func.attr in ("pop", "get", "setdefault")
        and node.args
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "__dict__"
    ):
        literal = node.args[0]
    else:
        return None
    if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
        return literal.value if _is_private(literal.value) else None
    return None


def scan(modules: list[Path] | None = None) -> Iterator[Finding]:
    modules = shipped_modules() if modules is None else modules
    code = Codebase(modules)
    for path in modules:
        tree = _parse(path)
        visitor = _Scan(path, code, tree)
        visitor.visit(tree)
        yield from visitor.findings


def test_no_third_party_private_name_outside_the_seam():
    findings = sorted(scan(), key=str)
    assert not findings, (
        "third-party private names outside pipeline/compat/ (move them into the seam):\n"
        + "\n".join(str(f) for f in findings)
    )


def test_the_scan_catches_each_kind_of_use(tmp_path):
    """Each kind the scan promises is flagged; our own private names are left alone."""
    source = tmp_path / "sample.py"
    source.write_text(
        "import aioice.ice\n"
        "from pipecat.services.stt_service import SegmentedSTTService\n"
        "from gradio.utils import _private_helper\n"
        "class Mixin:\n"
        "    def _trailing_silence(self):\n"
        "        return True\n"
        "class Ours(Mixin, SegmentedSTTService):\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "        self._audio_buffer = bytearray()\n"
        "    def _handle_user_started_speaking(self):\n"
        "        return self._segment_queue, self._mine\n"
        "def use(receiver, service, app):\n"
        "    receiver._RTCRtpReceiver__jitter_buffer = None\n"
        "    service.__dict__.pop('_wrapped')\n"
        "    aioice.ice.get_host_addresses = None\n"
        "    app.middleware_stack = None\n"
        "    return getattr(service, '_tracing_context'), service._mine\n"
    )
    flagged = {(f.line, f.what.split()[-1]) for f in scan([source])}
    assert flagged == {
        (3, "gradio.utils"),
        (7, "_trailing_silence"),
        (10, "_audio_buffer"),
        (11, "_handle_user_started_speaking"),
        (12, "_segment_queue"),
        (14, "_RTCRtpReceiver__jitter_buffer"),
        (15, "string"),
        (16, "aioice.ice.get_host_addresses"),
        (17, "assigned"),
        (18, "string"),
    }


if __name__ == "__main__":
    for finding in sorted(scan(), key=str):
        print(finding)
