"""The import graph inside ``llmkit/`` has no cycles, and ``llmkit.model`` works without ``llmkit.io``.

The graph is read from the source with ``ast``, so it counts every import a
module can run, not only the ones at the top: imports inside functions,
``from pkg import submodule`` (an edge to the submodule) and relative imports.
Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``; those
edges are counted too, except to the importer's own enclosing packages, which
are already being imported when it runs (a package's ``__init__`` importing
its own submodules is not a cycle).

One cycle is allowed: ``CausalLM.from_pretrained``/``save_pretrained`` import
``llmkit.io`` lazily, so the familiar entry point works while ``llmkit.model``
itself never needs ``llmkit.io`` (the subprocess test checks that).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (module, enclosing class.function, imported package prefix) of the imports the cycle check ignores
ALLOWED = {("llmkit.model.transformer", "CausalLM.from_pretrained", "llmkit.io"),
           ("llmkit.model.transformer", "CausalLM.save_pretrained", "llmkit.io")}


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package_dir`` (a package's name is its ``__init__``)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


class _Imports(ast.NodeVisitor):
    """Each import in a module, with the dotted name of the function or class it sits in."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.scope: list[str] = []
        self.found: list[tuple[str, list[str], int]] = []  # (scope, dotted candidates, line)

    def _nested(self, node: ast.AST) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _nested

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((".".join(self.scope), [alias.name], node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[:len(self.package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        # the base is always imported; each name may be a submodule of it
        self.found.append((".".join(self.scope), [base] + [f"{base}.{a.name}" for a in node.names], node.lineno))


def import_graph(package_dir: Path, allowed=frozenset()) -> dict[str, dict[str, str]]:
    """module -> {imported module: "file:line"} for the modules under ``package_dir``.

    Args:
        package_dir: the top-level package's directory.
        allowed: (module, scope, imported prefix) triples to leave out.
    """
    files = module_files(package_dir)
    graph: dict[str, dict[str, str]] = {m: {} for m in files}
    for module, path in files.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for scope, candidates, line in visitor.found:
            for name in candidates:
                if name not in files:
                    continue
                if any(module == m and scope == s and (name == p or name.startswith(p + "."))
                       for m, s, p in allowed):
                    continue
                parts = name.split(".")
                for target in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                    if target in files and target != module and target not in own_packages:
                        graph[module].setdefault(target, f"{path.relative_to(package_dir.parent)}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _describe(component: list[str], graph: dict[str, dict[str, str]]) -> str:
    members = set(component)
    edges = [f"  {a} -> {b} ({graph[a][b]})" for a in component for b in sorted(graph[a]) if b in members]
    return f"cycle among {', '.join(component)}:\n" + "\n".join(edges)


def test_no_import_cycles_inside_llmkit():
    graph = import_graph(ROOT / "llmkit", ALLOWED)
    found = cycles(graph)
    assert not found, "\n".join(_describe(c, graph) for c in found)


def test_the_graph_sees_lazy_submodule_and_package_imports():
    """Guards the check itself: edges that only a thorough reading finds are in the graph."""
    graph = import_graph(ROOT / "llmkit")
    assert "llmkit.io.load" in graph["llmkit.model.transformer"]  # inside CausalLM.from_pretrained
    assert "llmkit.io" in graph["llmkit.model.transformer"]  # the package __init__ it runs
    assert "llmkit.io" not in import_graph(ROOT / "llmkit", ALLOWED)["llmkit.model.transformer"]
    assert "llmkit.io.build" in graph["llmkit.io.gguf"]


def test_cycle_check_on_a_toy_package(tmp_path):
    """Relative, in-function and ``from pkg import submodule`` imports each close a cycle the check reports."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "a.py": "from . import b\n",  # relative, names a submodule
        "b.py": "def f():\n    from toy.sub import c\n",  # inside a function
        "sub/__init__.py": "",
        "sub/c.py": "from ..a import x\n",  # relative two levels up
        "d.py": "import toy.sub.c\n",  # outside the cycle
    }
    for name, text in sources.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert cycles(graph) == [["toy.a", "toy.b", "toy.sub.c"]]
    assert set(graph["toy.d"]) == {"toy.sub", "toy.sub.c"}
    assert cycles(import_graph(pkg, {("toy.b", "f", "toy.sub")})) == []


def test_model_imports_and_runs_without_io():
    code = textwrap.dedent("""
        import sys
        sys.modules["llmkit.io"] = None  # any import of llmkit.io or a submodule now fails
        import torch
        from llmkit.config import ModelConfig
        from llmkit.model import CausalLM

        cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32)
        model = CausalLM(cfg).eval()
        ids = torch.randint(0, 64, (2, 8))
        with torch.no_grad():
            logits = model(ids)
            model.setup_caches(max_batch_size=2, max_seq_len=16)
            cached = model(ids, input_pos=torch.arange(8))
        assert logits.shape == (2, 8, 64), logits.shape
        assert torch.allclose(logits, cached, atol=1e-5)
        assert not [m for m in sys.modules if m.startswith("llmkit.io.")]
        try:
            import llmkit.io.hf
        except ImportError:
            print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
