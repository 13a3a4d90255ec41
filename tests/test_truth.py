"""helpers.truth: numbers in prose must be backed by code or outputs; outputs must come from the current code.

The checks run on every committed notebook, and each is shown to fail on a planted defect.
"""

import copy
import json
import re
from pathlib import Path

import pytest

from helpers import truth

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _nb(markdown: str, code: str = "x = 1", output: str = "") -> dict:
    outputs = [{"output_type": "stream", "name": "stdout", "text": [output]}] if output else []
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": [markdown]},
        {"cell_type": "code", "metadata": {}, "source": [code], "outputs": outputs, "execution_count": 1},
    ]
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    truth.stamp(nb)
    return nb


def test_planted_unbacked_number_is_found():
    found = truth.unbacked(_nb("The fast decoder ran 5,212 tokens/s, 26.5x faster, on 2026-11-26."))
    assert [u.number for u in found] == ["5,212", "26.5x", "2026-11-26"]


def test_numbers_printed_by_code_or_outputs_are_backed():
    nb = _nb("It ran 5,212 tokens/s (1.31x) with 768 wide layers.", code="WIDTH = 768", output="5212.4 tok/s, 1.31x")
    assert truth.unbacked(nb) == []


def test_marked_definitional_numbers_pass_and_unmarked_ones_do_not():
    text = 'The article claims "4x" from pruning and "10x" from quantization.'
    assert [u.number for u in truth.unbacked(_nb(text))] == ["4x", "10x"]
    assert truth.unbacked(_nb(text + " <!-- def: 4x, 10x -->")) == []


def test_what_is_not_a_number_claim():
    text = (
        "## 3. Title\n1. first\nfp32 and int8 on GPT-2, notebook 04 and Notebook 06b, batch 1, k = 4, "
        "`n_embd=768`, [link](https://x.org/a/123.45), section 12.\n```python\ny = 99.5\n```"
    )
    assert truth.numbers(text) == []


def test_stale_outputs_are_found():
    nb = _nb("no numbers", code="print(1)")
    assert truth.stale(nb) == []
    edited = copy.deepcopy(nb)
    edited["cells"][1]["source"] = ["print(2)"]
    assert truth.stale(edited) == [1]
    del edited["cells"][1]["metadata"]["workbook"]
    assert truth.stale(edited) == [1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_backed_and_fresh(path):
    problems = truth.check(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_its_frame(path):
    nb = json.loads(path.read_text())
    md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "You will learn" in md, f"{path.name}: the opening 'You will learn' list is missing"
    closing = re.search(r"(?m)^## (\d+\. )?What you learned", md)
    assert closing, f"{path.name}: the closing 'What you learned' section is missing"
    assert "seed article" not in md.lower(), f"{path.name}: call it the article this workbook grew from"
    assert nb["metadata"].get("workbook", {}).get("mode") == "full", (
        f"{path.name}: committed outputs must come from a full-mode run of `python -m helpers.execute`"
    )


def test_marks_keep_thousands_commas():
    assert truth.unbacked(_nb("A vocabulary of 50,257 tokens and 1,024 positions. <!-- def: 50,257, 1,024 -->")) == []


def test_a_plot_cell_without_its_figure_is_found():
    nb = _nb("A plot.", code="plt.plot([1, 2])\nplt.show()", output="text only")
    assert truth.missing_plots(nb) == [1]
    nb["cells"][1]["outputs"].append({"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}})
    assert truth.missing_plots(nb) == []
    nb = _nb("A plot only on a GPU.", code="if gpu:\n    plt.show()")
    assert truth.missing_plots(nb) == []  # a figure drawn only in a branch may be absent
