# TOUR.md's snippets are doctests: every `>>>` line runs and its printed output must match, so a change
# that breaks the tour, or makes a number in it wrong, fails here. One test per section (each section
# imports what it uses, so it runs alone); failures report TOUR.md's line numbers. The Triton section
# needs tests/conftest.py's TRITON_INTERPRET=1 without a GPU, and triton itself.
#
# The tour's prose points at the code: `file.py`, `file.py:name`, `module.name`, `Class.method`,
# `results/x.md`, README sections, and in a "Source:" paragraph bare `name`s of the file named before
# them (a lowercase `a.b` is module a's b, unless a is a library such as torch). test_tour_references
# reads those with ast (nothing is imported) and fails, with TOUR.md's line, when a file is gone or a
# name is no longer defined where the tour says it is.
import ast
import doctest
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOUR = os.path.join(ROOT, "TOUR.md")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def sections():
    """The text before the first section, and [(title, first line number (0-based), text)] for each
    `## N. title` section of TOUR.md."""
    with open(TOUR, encoding="utf-8") as f:
        lines = f.read().split("\n")
    starts = [i for i, line in enumerate(lines) if re.match(r"## \d+\. ", line)] + [len(lines)]
    parts = [(lines[a][3:], a, "\n".join(lines[a:b])) for a, b in zip(starts[:-1], starts[1:])]
    return "\n".join(lines[:starts[0]]), parts


PREAMBLE, SECTIONS = sections()
SECTION_IDS = [f"section{title.split('.')[0]}" for title, _, _ in SECTIONS]


def test_tour_has_nine_sections_and_enough_doctest_lines():
    assert [t.split(".")[0] for t, _, _ in SECTIONS] == [str(i) for i in range(1, 10)]
    assert ">>> " not in PREAMBLE, "a snippet before section 1 would not be run: move it into a section"
    n = sum(len(re.findall(r"^(>>>|\.\.\.) ", text, re.M)) for _, _, text in SECTIONS)
    assert n >= 20, f"TOUR.md has {n} doctest lines"


@pytest.mark.parametrize("title,start,text", SECTIONS, ids=SECTION_IDS)
def test_tour_section(title, start, text):
    if "Triton" in title:
        pytest.importorskip("triton")
    test = doctest.DocTestParser().get_doctest(text, {"__name__": "tour"}, title, TOUR, start)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in TOUR.md §{title}"
    assert result.attempted > 0 or title.startswith("9."), f"TOUR.md §{title} has no snippet"


# ----------------------------------------------------------------------------- the tour's references

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
SPAN = re.compile(r"`([^`]+)`")  # within a paragraph, so it may cross a line break
PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:py|md|png))(?::(\w+(?:\.\w+)?))?")
DOTTED = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?(\([^`]*\))?")
BARE = re.compile(r"^([A-Za-z_]\w*)(\(.*\))?$")
README_SECTION = re.compile(r'README,? "([^"]+)"')
EXTERNAL = {"torch", "triton", "numpy", "math", "tiktoken", "transformers", "datasets"}  # not ours to check


def top_level(body):
    """The statements of a module or class body, looking inside if/try blocks (kernels.py defines its
    Triton kernels inside a try), not inside functions."""
    for node in body:
        if isinstance(node, (ast.If, ast.Try)):
            for block in (node.body, node.orelse, getattr(node, "finalbody", []),
                          *[h.body for h in getattr(node, "handlers", [])]):
                yield from top_level(block)
        else:
            yield node


def defined(body):
    """{name: node} for the functions, classes and assigned names a body defines."""
    names = {}
    for node in top_level(body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


class Source:
    """What the repository's files define, read with ast and cached."""

    def __init__(self, root):
        self.root, self.cache = root, {}

    def exists(self, path):
        return os.path.isfile(os.path.join(self.root, path))

    def names(self, path):
        if path not in self.cache:
            with open(os.path.join(self.root, path), encoding="utf-8") as f:
                self.cache[path] = defined(ast.parse(f.read(), path).body)
        return self.cache[path]

    def modules(self):
        return sorted(f for f in os.listdir(self.root) if f.endswith(".py"))

    def lookup(self, path, dotted):
        """None if `dotted` (name or Class.member) is defined in path, else what is missing."""
        first, _, member = dotted.partition(".")
        node = self.names(path).get(first)
        if node is None:
            return f"{path} defines no `{first}`"
        if member and not (isinstance(node, ast.ClassDef) and member in defined(node.body)):
            return f"`{first}` in {path} has no member `{member}`"
        return None

    def keywords(self, path, dotted, call):
        """None if every keyword of `call` ("(a, kw=1)") is a parameter of `dotted` in path."""
        node = self.names(path)[dotted.split(".")[0]]
        if "." in dotted:
            node = defined(node.body)[dotted.split(".")[1]]
        if isinstance(node, ast.ClassDef):
            fields = defined(node.body)
            init = fields.get("__init__")
            node = init if isinstance(init, ast.FunctionDef) else None
            allowed = set(fields)
        else:
            allowed = set()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            if a.kwarg is not None:
                return None
            allowed |= {p.arg for p in a.posonlyargs + a.args + a.kwonlyargs}
        unknown = [kw for kw in re.findall(r"(\w+)\s*=(?!=)", call or "") if kw not in allowed]
        return f"`{dotted}` takes no parameter {', '.join(map(repr, unknown))}" if unknown else None


def check_references(text, source):
    """(number of references checked, ["TOUR.md:line: `span`: what is wrong", ...]) for a tour's text."""
    text = FENCE.sub(lambda m: "\n" * m.group().count("\n"), text)  # snippets are checked by running them
    line_of = lambda pos: text.count("\n", 0, pos) + 1
    classes = {}
    for path in source.modules():
        for name, node in source.names(path).items():
            if isinstance(node, ast.ClassDef):
                classes.setdefault(name, []).append(path)
    checked, problems = 0, []

    def check(pos, span, problem):
        nonlocal checked
        checked += 1
        if problem:
            problems.append(f"TOUR.md:{line_of(pos)}: `{span}`: {problem}")

    def check_name(pos, span, path, dotted, call):
        missing = source.lookup(path, dotted)
        check(pos, span, missing or (source.keywords(path, dotted, call) if call else None))

    for paragraph in re.finditer(r"(?:.+\n?)+", text):
        in_source = paragraph.group().startswith("Source:")
        last_file = None
        for m in SPAN.finditer(paragraph.group()):
            span, pos = " ".join(m.group(1).split("\n")), paragraph.start() + m.start()
            rest = span
            for p in PATH.finditer(span):
                path, name = p.group(1), p.group(2)
                check(pos, span, None if source.exists(path) else f"no file {path}")
                if path.endswith(".py") and source.exists(path):
                    last_file = path
                    if name:
                        check_name(pos, span, path, name, None)
                rest = rest.replace(p.group(), " ")
            found = False
            for d in DOTTED.finditer("" if span.startswith("python ") else rest):  # a command: its files only
                first, second, third, call = d.groups()
                if first[0].islower() and first not in EXTERNAL:  # in prose, `a.b` names module a
                    found = True
                    if not source.exists(first + ".py"):
                        check(pos, span, f"no file {first}.py")
                    else:
                        check_name(pos, span, first + ".py", ".".join(filter(None, (second, third))), call)
                elif first[0].isupper() and third is None:
                    found = True
                    homes = classes.get(first, [])
                    if not homes:
                        check(pos, span, f"no top-level .py file defines a class `{first}`")
                    else:
                        misses = [source.lookup(path, f"{first}.{second}") for path in homes]
                        ok = [path for path, miss in zip(homes, misses) if miss is None]
                        check(pos, span, None if ok else misses[0])
                        if ok and call:
                            check(pos, span, source.keywords(ok[0], f"{first}.{second}", call))
            bare = BARE.match(span)
            if in_source and bare and not found and rest == span:
                if last_file is None:
                    check(pos, span, "a name in a Source paragraph needs a `file.py` before it")
                else:
                    check_name(pos, span, last_file, bare.group(1), bare.group(2))
    for m in README_SECTION.finditer(text):
        with open(os.path.join(source.root, "README.md"), encoding="utf-8") as f:
            headings = [line for line in f.read().split("\n") if line.startswith("#")]
        check(m.start(), m.group(), None if any(m.group(1) in h for h in headings)
              else f"README.md has no heading with \"{m.group(1)}\"")
    return checked, problems


def test_tour_references():
    with open(TOUR, encoding="utf-8") as f:
        checked, problems = check_references(f.read(), Source(ROOT))
    assert not problems, ("TOUR.md names what the code no longer has; fix the reference or the code:\n"
                          + "\n".join(problems))
    assert checked >= 60, f"only {checked} references found in TOUR.md: is the parser still reading it?"


def test_tour_references_catch_renames(tmp_path):
    """The checker itself: each kind of stale reference is reported with its line, the good ones are not."""
    (tmp_path / "mod.py").write_text("class Thing:\n    def method(self): pass\n\n"
                                     "def func(a, *, kw=1): pass\n\nVALUE = 3\n")
    (tmp_path / "README.md").write_text("# Intro\n## Usage\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "here.md").write_text("x\n")
    good = ("`mod.py`, `mod.py:func`, `mod.func`, `mod.func(kw=2)`, `Thing.method`, `mod.Thing.method`,\n"
            "`results/here.md`, `python mod.py --x=in.txt`, README \"Usage\", `torch.device`.\n\n"
            "Source: `mod.py`: `func`, `func(kw=0)`, `VALUE`, `Thing`, `\"a string\"`, `x = 1`.\n")
    bad = ["`gone.py`", "`mod.py:renamed`", "`mod.renamed`", "`mod.func(old_kw=2)`", "`Thing.renamed`",
           "`Gone.method`", "`results/gone.md`", "README \"Gone\"", "`gone.func`"]
    text = good + "\n" + "\n".join(f"line {b}." for b in bad) + "\n\nSource: `mod.py`: `renamed`.\n"
    text += "\n```python\n>>> `mod.inside_a_snippet_is_not_a_reference`\n```\n"
    checked, problems = check_references(text, Source(str(tmp_path)))
    assert len(problems) == len(bad) + 1, "\n".join(problems)
    for i, b in enumerate(bad):
        assert any(p.startswith(f"TOUR.md:{6 + i}: ") for p in problems), (b, problems)
    assert "TOUR.md:16: `renamed`: mod.py defines no `renamed`" in problems, problems
    assert checked >= len(bad) + 14
