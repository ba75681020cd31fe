"""Dependencies run one way and are visible: static checks on the project's own import graph.

A plain-``ast`` analysis (no tools, nothing imported) of every module under ``universality/``,
``models/`` and ``analysis/``. ``test_counts_printed`` prints the counts (``pytest -s``);
``python scripts/import_graph.py [--details]`` prints them (and every finding) without pytest.

The graph
    Only ``universality/``, ``models/`` and ``analysis/`` are read (not tests, scripts, benchmarks).
    One node per project module (``pkg/__init__.py`` is the node ``pkg``). ``import a.b`` and
    ``from a.b import x`` in module M are an edge M -> ``a.b``; ``from a import b`` where ``a.b`` is
    a module is an edge to ``a.b`` (not to ``a``). Relative imports are resolved. Imports count
    wherever they sit: at module level, in class bodies and inside functions alike (a function-local
    import still runs, so it still closes a cycle). Imports under ``if TYPE_CHECKING:`` never run
    and are left out. Not seen: the parent packages an import also executes, and dynamic imports
    (``importlib.import_module``), e.g. the lazy ``__getattr__`` of ``universality`` and
    ``universality.zoo`` and the architecture registry's built-ins.

Rule 1 - no cycles
    The graph has no cycle (no strongly connected group of two or more modules). A failure names
    one shortest cycle through each group, with the line of every import on the path.
    ``KNOWN_CYCLES`` lists the groups tolerated for now, each with its reason; an entry that no
    longer matches a cycle fails too, so it gets removed once the cycle is gone.

Rule 2 - no private names across modules
    No module imports another module's ``_private`` name: ``from a.b import _x`` (``_x`` a name or
    a submodule) or ``a.b._x`` through a module bound by an import. This holds inside a package too:
    ``pkg/x.py`` importing ``_y`` from ``pkg/y.py`` or from ``pkg/__init__.py`` counts. Dunder
    names (``__version__``) are fine. Make the name public (and list it in ``__all__``) or move the
    helper into the module that uses it. ``KNOWN_PRIVATE`` lists the uses tolerated for now (files
    another change owns); a stale entry fails.

Rule 3 - a function-local import of a project module states its reason
    The one accepted reason is import cost: the imported module pulls heavy dependencies (torch,
    transformers, hydra, ...) that a cheap entry point (``import universality``, the study config,
    the CLI's ``--help``) must not pay for. Such an import carries a comment containing
    ``import cost``: on the import statement itself, or on the line directly above it; a comment
    above a run of consecutive import lines covers the whole run. E.g.::

        def planted_corpus(...):
            # import cost: universality.data pulls torch; this module stays torch-free
            from universality.data.sources import Document
            from universality.data.subsets import select_subset

    Dodging a cycle is not a reason: break the cycle (move the shared piece into a lower module)
    and import at module level. Imports of third-party modules inside functions are not checked.
    ``KNOWN_LOCAL`` lists the modules whose undocumented local imports are tolerated for now (files
    another change owns); a stale entry fails.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("universality", "models", "analysis")
MARKER = "import cost"

# Cycles tolerated for now: group of modules -> reason. Each actual cycle group must lie inside one
# of these; an entry that matches no cycle any more fails the test (remove it).
KNOWN_CYCLES: dict[frozenset[str], str] = {}

# Cross-module private imports tolerated for now: (importer, "owner._name") -> reason. All are in
# files another change owns; an entry that no longer occurs fails the test (remove it).
KNOWN_PRIVATE: dict[tuple[str, str], str] = {
}

# Modules (a package name covers its submodules) whose undocumented function-local project imports
# are tolerated for now: module -> reason. All are files another change owns; an entry with no
# undocumented local import left under it fails the test (remove it).
_CLI = "owned by the CLI renovation: lazy imports that keep --help fast need '# import cost' comments"
_STUDY = "universality/study/* is owned by the study renovation: add '# import cost' comments or import at module level"
KNOWN_LOCAL: dict[str, str] = {}


# --------------------------------------------------------------------------------------------------
# analysis


@dataclass(frozen=True)
class Import:
    """One import of a project module by another."""

    importer: str
    target: str
    line: int
    local: bool  # inside a function body
    function: str | None  # qualified name of the enclosing function, when local
    documented: bool  # a comment containing MARKER on the statement or above its run of import lines


@dataclass(frozen=True)
class PrivateUse:
    importer: str
    target: str
    name: str
    line: int


@dataclass
class Report:
    modules: dict[str, Path]
    imports: list[Import] = field(default_factory=list)
    private: list[PrivateUse] = field(default_factory=list)

    def graph(self) -> dict[str, dict[str, int]]:
        """importer -> {target: first line}, self-imports dropped."""
        edges: dict[str, dict[str, int]] = {m: {} for m in self.modules}
        for imp in self.imports:
            if imp.target != imp.importer:
                edges[imp.importer].setdefault(imp.target, imp.line)
        return edges

    def cycle_groups(self) -> list[list[str]]:
        return strongly_connected(self.graph())

    def local_imports(self) -> list[Import]:
        return [i for i in self.imports if i.local]

    def undocumented_local(self) -> list[Import]:
        return [i for i in self.imports if i.local and not i.documented]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path = ROOT) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            modules[module_name(path, root)] = path
    return modules


def comment_lines(source: str) -> dict[int, str]:
    """line number -> text of the comment on that line."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string
    return out


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Visitor(ast.NodeVisitor):
    def __init__(self, name: str, is_package: bool, modules: dict[str, Path], comments: dict[int, str],
                 import_lines: set[int]) -> None:
        self.name = name
        self.package = name if is_package else name.rpartition(".")[0]
        self.modules = modules
        self.comments = comments
        self.import_lines = import_lines  # every line some import statement of the module spans
        self.scope: list[str] = []  # enclosing classes and functions
        self.depth = 0  # enclosing functions
        self.imports: list[Import] = []
        self.private: list[PrivateUse] = []
        self.bound: dict[str, str] = {}  # local name -> project module it is bound to by an import

    # -- helpers

    def resolve(self, dotted: str) -> str | None:
        """The project module ``dotted`` names (its longest module prefix), or None if not ours."""
        if dotted.split(".")[0] not in PACKAGES:
            return None
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in self.modules:
                return candidate
        return None

    def documented(self, node: ast.stmt) -> bool:
        first = node.lineno
        while first - 1 in self.import_lines:  # the start of its run of consecutive import lines
            first -= 1
        lines = range(first - 1, (node.end_lineno or node.lineno) + 1)
        return any(MARKER in self.comments.get(n, "").lower() for n in lines)

    def add(self, node: ast.stmt, target: str) -> None:
        local = self.depth > 0
        self.imports.append(
            Import(
                importer=self.name,
                target=target,
                line=node.lineno,
                local=local,
                function=".".join(self.scope) if local else None,
                documented=self.documented(node),
            )
        )

    def flag(self, target: str, name: str, line: int) -> None:
        if target != self.name:
            self.private.append(PrivateUse(self.name, target, name, line))

    # -- scopes

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.scope.append(getattr(node, "name", "<lambda>"))
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    # -- imports

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = self.resolve(alias.name)
            if target is None:
                continue
            self.add(node, target)
            for part in alias.name.split(".")[1:]:
                if is_private(part):
                    self.flag(target, part, node.lineno)
                    break
            if alias.asname:
                self.bound[alias.asname] = target
            else:
                self.bound[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".") if self.package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        owner = self.resolve(source)
        if owner is None:
            return
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if alias.name != "*" and submodule in self.modules:
                self.add(node, submodule)
                self.bound[alias.asname or alias.name] = submodule
                if is_private(alias.name):
                    self.flag(source, alias.name, node.lineno)
            else:
                self.add(node, owner)
                if is_private(alias.name):
                    self.flag(owner, alias.name, node.lineno)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain: list[str] = []
        cur: ast.expr = node
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        if isinstance(cur, ast.Name) and cur.id in self.bound:
            module = self.bound[cur.id]
            attrs = list(reversed(chain))
            while attrs and f"{module}.{attrs[0]}" in self.modules:
                module = f"{module}.{attrs.pop(0)}"
            if attrs and is_private(attrs[0]):
                self.flag(module, attrs[0], node.lineno)
            return  # the whole chain is handled here
        self.generic_visit(node)


def analyse(root: Path = ROOT) -> Report:
    modules = discover(root)
    report = Report(modules)
    for name, path in modules.items():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        import_lines = {
            n
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
        }
        visitor = _Visitor(name, path.name == "__init__.py", modules, comment_lines(source), import_lines)
        visitor.visit(tree)
        report.imports.extend(dict.fromkeys(visitor.imports))  # one record per line and target
        # the same private use is reported once per line
        report.private.extend(dict.fromkeys(visitor.private))
    return report


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan: the strongly connected groups with two or more modules, each sorted, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # recursion depth is bounded by the module count
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def shortest_cycle(graph: dict[str, dict[str, int]], group: list[str]) -> list[str]:
    """A shortest cycle through the group's first module, as a closed path of modules."""
    start, members = group[0], set(group)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w not in members:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return [start]


def describe_cycle(report: Report, group: list[str]) -> str:
    graph = report.graph()
    path = shortest_cycle(graph, group)
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])]
    return " -> ".join([*steps, path[-1]])


def known_group(group: list[str]) -> frozenset[str] | None:
    return next((known for known in KNOWN_CYCLES if set(group) <= known), None)


def known_local(module: str) -> str | None:
    """The KNOWN_LOCAL entry covering ``module`` (itself or a package above it), if any."""
    return max((k for k in KNOWN_LOCAL if module == k or module.startswith(k + ".")), key=len, default=None)


def counts(report: Report) -> dict[str, int]:
    groups = report.cycle_groups()
    local = report.local_imports()
    undocumented = report.undocumented_local()
    return {
        "modules": len(report.modules),
        "import edges": sum(len(targets) for targets in report.graph().values()),
        "cycles (strongly connected groups)": len(groups),
        "cycles tolerated by KNOWN_CYCLES": sum(known_group(g) is not None for g in groups),
        "private imports across modules": len(report.private),
        "private imports tolerated by KNOWN_PRIVATE": sum(
            (p.importer, f"{p.target}.{p.name}") in KNOWN_PRIVATE for p in report.private
        ),
        "function-local project imports": len(local),
        "function-local, documented (import cost)": len(local) - len(undocumented),
        "function-local, undocumented": len(undocumented),
        "function-local, undocumented, tolerated by KNOWN_LOCAL": sum(known_local(i.importer) is not None for i in undocumented),
    }


def summary(report: Report, details: bool = True) -> str:
    lines = [f"{k}: {v}" for k, v in counts(report).items()]
    if details:
        for group in report.cycle_groups():
            tag = " [KNOWN]" if known_group(group) else ""
            lines.append(f"cycle{tag}: {describe_cycle(report, group)}")
        for p in report.private:
            lines.append(f"private: {p.importer} (line {p.line}) uses {p.target}.{p.name}")
        for i in report.local_imports():
            state = "documented" if i.documented else "UNDOCUMENTED"
            lines.append(f"local [{state}]: {i.importer}.{i.function} (line {i.line}) imports {i.target}")
    return "\n".join(lines)


def _lines(items: list[str]) -> str:
    return "\n  ".join(["", *items])


# --------------------------------------------------------------------------------------------------
# tests

_REPORT: Report | None = None


def report() -> Report:
    global _REPORT
    if _REPORT is None:
        _REPORT = analyse()
    return _REPORT


def test_counts_printed():
    rep = report()
    print("\n" + summary(rep, details=False))
    assert len(rep.modules) > 50, "the analysis should see every project module"
    assert rep.imports, "the analysis should see the project's imports"


def test_no_import_cycles():
    rep = report()
    groups = rep.cycle_groups()
    unknown = [describe_cycle(rep, g) for g in groups if known_group(g) is None]
    assert not unknown, "import cycles (break them; see the module docstring):" + _lines(unknown)
    stale = [f"{sorted(k)}: {why}" for k, why in KNOWN_CYCLES.items() if not any(set(g) <= k for g in groups)]
    assert not stale, "KNOWN_CYCLES entries that match no cycle any more (remove them):" + _lines(stale)


def test_no_private_imports_across_modules():
    rep = report()
    found = [
        f"{p.importer} (line {p.line}) uses {p.target}.{p.name}"
        for p in rep.private
        if (p.importer, f"{p.target}.{p.name}") not in KNOWN_PRIVATE
    ]
    assert not found, "imports of another module's private name (make it public or move it):" + _lines(found)
    seen = {(p.importer, f"{p.target}.{p.name}") for p in rep.private}
    stale = [f"{k}: {why}" for k, why in KNOWN_PRIVATE.items() if k not in seen]
    assert not stale, "KNOWN_PRIVATE entries that no longer occur (remove them):" + _lines(stale)


def test_function_local_project_imports_state_import_cost():
    rep = report()
    undocumented = rep.undocumented_local()
    bad = [
        f"{i.importer}.{i.function} (line {i.line}) imports {i.target}"
        for i in undocumented
        if known_local(i.importer) is None
    ]
    assert not bad, (
        f"function-local imports of project modules without a '# {MARKER}: ...' comment (import at "
        "module level, or document the import cost):" + _lines(bad)
    )
    used = {known_local(i.importer) for i in undocumented}
    stale = [f"{m}: {why}" for m, why in KNOWN_LOCAL.items() if m not in used]
    assert not stale, "KNOWN_LOCAL entries with no undocumented local import left (remove them):" + _lines(stale)


def test_analysis_rules_on_a_sample(tmp_path):
    """The analysis itself: relative imports, submodules, TYPE_CHECKING, private names, markers."""
    pkg = tmp_path / "universality"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .b import public, _hidden, __version__\n"
        "if TYPE_CHECKING:\n"
        "    from universality.sub import c\n"
        "def f():\n"
        "    from universality.sub import c\n"
        "    # import cost: pulls torch\n"
        "    import universality.sub.b as bb\n"
        "    return bb._other\n"
        "def g():\n"
        "    x = 1  # import cost: a comment off the import run covers nothing\n"
        "\n"
        "    # import cost: one comment above a run of consecutive imports covers the run\n"
        "    from universality.sub import b\n"
        "    from universality.sub import (\n"
        "        c,\n"
        "    )\n"
    )
    (pkg / "sub" / "b.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import sub\n")
    for name in ("models", "analysis"):
        (tmp_path / name).mkdir()
    rep = analyse(tmp_path)
    graph = rep.graph()
    assert graph["universality.sub"] == {"universality.sub.a": 1}
    assert set(graph["universality.sub.a"]) == {"universality.sub.b", "universality.sub.c"}
    assert graph["universality.sub.c"] == {"universality.sub": 1}
    assert rep.cycle_groups() == [["universality.sub", "universality.sub.a", "universality.sub.c"]]
    assert {(p.target, p.name) for p in rep.private} == {("universality.sub.b", "_hidden"), ("universality.sub.b", "_other")}
    local = {(i.function, i.target, i.documented) for i in rep.local_imports()}
    assert local == {
        ("f", "universality.sub.c", False),
        ("f", "universality.sub.b", True),
        ("g", "universality.sub.b", True),
        ("g", "universality.sub.c", True),
    }
    assert counts(rep)["function-local, undocumented"] == 1
