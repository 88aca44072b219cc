"""No import circle in ``pipeline/``, and the local models load without the services.

A circle of imports works until somebody imports its modules in another
order, then fails with a half-initialised module. Every import counts here,
those under ``TYPE_CHECKING`` and inside functions too: each is one module
depending on another. Importing ``a.b.c`` also runs ``a.b``'s ``__init__``,
so it depends on that package as well (unless the importer is inside it).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pipeline"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The pipeline modules ``name`` needs initialised, by every import statement in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    started = {name} | _ancestors(name)  # being imported already when this module runs
    needed = set()
    for target in targets & known:
        needed |= ({target} | _ancestors(target)) - started
    return needed & known


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph`` as a path that ends where it starts, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for dependency in sorted(graph.get(node, ())):
            if cycle := visit(dependency):
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return None


def test_the_graph_sees_the_imports_that_matter():
    graph = import_graph()
    assert "pipeline.providers.registry" in graph["pipeline.config"]
    assert "pipeline.providers.local.services" in graph["pipeline.providers.local"]  # lazy
    # Importing a provider module runs the package's __init__ first.
    assert "pipeline.providers" in graph["pipeline.config"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circle_in_pipeline():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or ())


def test_the_local_models_load_without_pipecat_or_gradio():
    """The start-up probe's child and the LLM benchmark import them before anything heavy."""
    heavy = ("pipecat", "gradio", "fastrtc", "groq", "elevenlabs", "openai", "httpx")
    code = (
        "import json, sys\n"
        "import pipeline.providers.local.models\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
