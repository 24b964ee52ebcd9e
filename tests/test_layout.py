"""The flat layout stays readable: imports between the project's files point one way (no cycle, imports
inside functions included), and no top-level file grows past what one sitting reads."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(f for f in os.listdir(ROOT) if f.endswith(".py"))
MODULES = {f[:-3] for f in FILES}
MAX_LINES = 600
# Being reordered in their own change; remove each name once its file is back under MAX_LINES.
KNOWN_LONG = {"kernels.py", "train.py"}


def project_imports(path):
    """The project modules a file imports, at module level or inside functions."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & MODULES


def test_project_imports_form_no_cycle():
    graph = {f[:-3]: project_imports(os.path.join(ROOT, f)) - {f[:-3]} for f in FILES}
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for n in sorted(graph[m]):
            visit(n)
        path.pop()
        done.add(m)
    for m in sorted(graph):
        visit(m)
    assert graph["lm"] == set(), "lm.py sits below model.py: it imports no project file"


def test_no_top_level_file_is_too_long():
    for f in FILES:
        with open(os.path.join(ROOT, f), encoding="utf-8") as fh:
            n = sum(1 for _ in fh)
        assert n <= MAX_LINES or f in KNOWN_LONG, f"{f} has {n} lines (at most {MAX_LINES})"
