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


def test_the_run_times_cell_shows_the_run_just_recorded(tmp_path, monkeypatch):
    import json

    from helpers import results

    monkeypatch.setattr(results, "RECORDED", tmp_path / "recorded")
    path = tmp_path / "demo.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# demo"),
        nbformat.v4.new_code_cell('results.show_run_times("demo.ipynb")'),
    ]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="No run of demo.ipynb ...")]
    nbformat.write(nb, path)
    assert "No run of demo.ipynb has been recorded" in results.run_times_markdown("demo.ipynb")
    execute.record_time("demo.ipynb", 123.0, quick=False)
    execute.refresh_run_times(nb, "demo.ipynb")
    nbformat.write(nb, path)
    out = nbformat.read(path, as_version=4).cells[1].outputs
    assert len(out) == 1 and "full mode (the default): 2.0 min on" in out[0]["data"]["text/markdown"]
    rows = [json.loads(line) for f in (tmp_path / "recorded").glob("runs--*.jsonl") for line in f.open()]
    assert [r["seconds"] for r in rows] == [123]
