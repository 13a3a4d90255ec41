"""Shared code for the Faster GPT-2 workbook.

Each module has one job; the notebooks import what they need:

- ``helpers.notebook``  quick mode, warning filters, the set-up banner
- ``helpers.device``    which device to use, what the hardware is, its memory bandwidth
- ``helpers.models``    the model zoo: ``load(name)`` for every model the workbook uses
- ``helpers.data``      the Python standard library as a corpus, split by file
- ``helpers.bench``     timing of generation (TTFT, decode tokens/s, memory, speed of light)
- ``helpers.evaluate``  perplexity and greedy-token agreement
- ``helpers.results``   the local result log and its plots
- ``helpers.train``     a compact training loop
- ``helpers.recipe``    how the pocket models were made (tokenizer, configs, model card)
- ``helpers.checks``    checks for the exercises
"""

__version__ = "0.1.0"
