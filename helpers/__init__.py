"""Shared code for the Faster GPT-2 workbook.

Each module has one job; the notebooks import what they need:

- ``helpers.notebook``  quick mode, warning filters, the set-up banner
- ``helpers.device``    which device to use, what the hardware is (CPU instruction sets too), its memory bandwidth
- ``helpers.capability`` what a GPU can do from its compute capability, and what the workbook chooses there
- ``helpers.models``    the model zoo: ``load(name)`` for every model the workbook uses
- ``helpers.data``      the Python standard library as a corpus, split by file
- ``helpers.timing``    the one timing discipline: warm-up, repeats, median and spread, the GPU synchronised
- ``helpers.bench``     timing of generation (TTFT, decode tokens/s, memory, speed of light) and of one decode step
- ``helpers.evaluate``  perplexity and greedy-token agreement
- ``helpers.results``   the result log, recorded runs from other devices, verdicts from data, plots
- ``helpers.readme``    ``python -m helpers.readme``: the README's and teacher's guide's tables from recorded runs
- ``helpers.truth``     the checks that prose numbers are backed by outputs and that outputs are fresh
- ``helpers.setup_cost`` ``python -m helpers.setup_cost triton``: what an optional package adds to the set-up
- ``helpers.execute``   ``python -m helpers.execute``: run notebooks the way committed outputs are made
- ``helpers.colab``     the repository's address, every notebook's Colab badge and set-up cell
- ``helpers.train``     a compact training loop
- ``helpers.recipe``    how the pocket models were made (tokenizer, configs, model card)
- ``helpers.checks``    checks for the exercises
- ``helpers.quant``     quantizers from scratch (int8, int4, granularities, fake quantization)
- ``helpers.q8``        llama.cpp's q8_0 weights and the workbook's own C++ kernel for them (CPU, notebook 03c)
- ``helpers.prune``     pruning: magnitude (unstructured), 2:4, MLP neurons and blocks, CSR timing
- ``helpers.fastgen``   the fast decoder, a package in the lessons' order: model (eager, ``KVCache``), policy
                        (compile, CUDA graphs), triton_step (the hand-written GPU step), persistent_step and
                        dataflow_step (the same in one kernel a token), batched_step (the GPU step for a batch,
                        on tensor cores), cpu_step (the C++ step for q8_0 weights), generator (``FastGPT2``)
- ``helpers.ladder``    ``python -m helpers.ladder``: every decoding setup measured in one run
- ``helpers.timeline``  ``python -m helpers.timeline``: a decode token's kernels on the GPU's clock, busy and idle
- ``helpers.roofline``  ``python -m helpers.roofline``: arithmetic intensity, the two measured roofs, what bounds a step
- ``helpers.llamacpp``  ``python -m helpers.llamacpp``: llama.cpp's decoder timed beside the workbook's on a CPU
- ``helpers.speculative`` speculative decoding from scratch (greedy and rejection sampling)
- ``helpers.distill``   the knowledge-distillation loss (soft targets with a temperature)
- ``helpers.serve``     a continuous-batching engine with a paged KV cache, from scratch (for notebook 08)
- ``helpers.leaderboard`` notebook 07's leaderboard: entries kept in the result log, Pareto fronts
"""

__version__ = "0.1.0"
