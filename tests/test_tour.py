# TOUR.md's snippets are doctests: every `>>>` line runs and its printed output must match, so a change
# that breaks the tour, or makes a number in it wrong, fails here. One test per section (each section
# imports what it uses, so it runs alone); failures report TOUR.md's line numbers. The Triton section
# needs tests/conftest.py's TRITON_INTERPRET=1 without a GPU, and triton itself.
import doctest
import os
import re

import pytest

TOUR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "TOUR.md")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def sections():
    """The text before the first section, and [(title, first line number (0-based), text)] for each
    `## N. title` section of TOUR.md."""
    with open(TOUR, encoding="utf-8") as f:
        lines = f.read().split("\n")
    starts = [i for i, line in enumerate(lines) if re.match(r"## \d+\. ", line)] + [len(lines)]
    return "\n".join(lines[:starts[0]]), [(lines[a][3:], a, "\n".join(lines[a:b])) for a, b in zip(starts[:-1], starts[1:])]


PREAMBLE, SECTIONS = sections()


def test_tour_has_nine_sections_and_enough_doctest_lines():
    assert [t.split(".")[0] for t, _, _ in SECTIONS] == [str(i) for i in range(1, 10)]
    assert ">>> " not in PREAMBLE, "a snippet before section 1 would not be run: move it into a section"
    n = sum(len(re.findall(r"^(>>>|\.\.\.) ", text, re.M)) for _, _, text in SECTIONS)
    assert n >= 20, f"TOUR.md has {n} doctest lines"


@pytest.mark.parametrize("title,start,text", SECTIONS, ids=[f"section{t.split('.')[0]}" for t, _, _ in SECTIONS])
def test_tour_section(title, start, text):
    if "Triton" in title:
        pytest.importorskip("triton")
    test = doctest.DocTestParser().get_doctest(text, {"__name__": "tour"}, title, TOUR, start)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in TOUR.md §{title}"
    assert result.attempted > 0 or title.startswith("9."), f"TOUR.md §{title} has no snippet"
