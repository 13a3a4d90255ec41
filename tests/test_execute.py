"""helpers.execute: progress bars' final states in saved outputs, and the stamps the truth check reads."""

import nbformat

from helpers import execute, truth


def _bar_notebook():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("for i in tqdm(range(25)): pass")
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={
                "application/vnd.jupyter.widget-view+json": {"model_id": "box", "version_major": 2},
                "text/plain": "  0%|          | 0/25 [00:00<?, ?it/s]",
            },
        ),
        nbformat.v4.new_output("stream", name="stderr", text="step 1/3\rstep 2/3\rstep 3/3\ndone\n"),
    ]
    nb.cells = [cell]
    state = {
        "box": {"model_name": "HBoxModel", "state": {"children": [f"IPY_MODEL_{k}" for k in ("left", "bar", "right")]}},
        "left": {"model_name": "HTMLModel", "state": {"value": "perplexity: 100%"}},
        "bar": {"model_name": "FloatProgressModel", "state": {"value": 25, "max": 25}},
        "right": {"model_name": "HTMLModel", "state": {"value": "\u2007 25/25 [00:27&lt;00:00,  1.09s/it]"}},
    }
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    return nb


def test_tidy_shows_the_final_state_of_progress_bars():
    nb = _bar_notebook()
    execute.tidy(nb)
    bar, stream = nb.cells[0].outputs
    assert bar["data"]["text/plain"] == "perplexity: 100%|██████████|  25/25 [00:27<00:00,  1.09s/it]"
    assert stream["text"] == "step 3/3\ndone\n"


def test_stamped_cells_are_fresh_until_edited():
    nb = _bar_notebook()
    truth.stamp(nb)
    assert truth.stale(nb) == []
    nb.cells[0].source += "\nprint('changed')"
    assert truth.stale(nb) == [0]
