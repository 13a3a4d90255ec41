# make lab   set up (if needed) and open the workbook in JupyterLab
# make test  set up (if needed), check the code style and run every test and notebook
# Both create the virtual environment .venv when it is missing; running them again is safe.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
READY  := $(VENV)/.ready
TORCH_VERSION ?= 2.13.0

# A folder of wheels for a room without internet: `make wheelhouse` where there is internet, copy the
# repository with wheelhouse/ to each machine, and `make lab` / `make test` install from it, offline.
WHEELS := $(if $(wildcard wheelhouse/*.whl),--no-index --find-links wheelhouse,)

.PHONY: lab test setup clean wheelhouse

setup: $(READY)

$(READY): pyproject.toml requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first: a CPU build where there is no NVIDIA GPU (a local wheel of $(TORCH_VERSION) if pip can
	@# find one, else the CPU index), so that pip never pulls the multi-GB CUDA build on a CPU machine.
	@if $(BIN)/python -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install "torch>=2.6,<3"; \
	elif $(BIN)/pip install -q --no-index --no-deps $(if $(WHEELS),--find-links wheelhouse,) torch==$(TORCH_VERSION) 2>/dev/null; then \
	  echo "installed torch $(TORCH_VERSION) from a local wheel"; \
	else $(BIN)/pip install "torch>=2.6,<3" --index-url https://download.pytorch.org/whl/cpu; fi
	$(BIN)/pip install $(WHEELS) -r requirements.txt
	@touch $(READY)

wheelhouse:
	$(PYTHON) -m pip download -d wheelhouse "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu
	$(PYTHON) -m pip download -d wheelhouse --find-links wheelhouse ".[lab,dev]" setuptools  # torch: the CPU wheel above

# Jupyter refuses to run as root unless told; containers and some classroom machines run as root.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(READY)
	$(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

test: $(READY)
	$(BIN)/ruff check helpers tests notebooks
	$(BIN)/ruff format --check helpers tests notebooks
	WORKBOOK_MODEL=pocket WORKBOOK_QUICK=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg $(BIN)/python -m pytest; \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) results .pytest_cache
