# lstmlab: `make run` installs into .venv and runs the default experiment; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
PY      = $(BIN)/python
LAB     = $(BIN)/lstmlab
STAMP   = $(VENV)/.installed

.PHONY: help install run test adder-reference adder-encodings sin-cos clean

help:
	@echo "make run | test | install [TORCH=spec] | adder-reference | adder-encodings | sin-cos"

# torch is installed first and pinned (a bare `torch` requirement pulls a multi-GB CUDA build);
# `make install TORCH=...` picks another build, e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cu124".
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

install:
	@rm -f $(STAMP)
	@$(MAKE) --no-print-directory $(STAMP)

run: $(STAMP)
	$(LAB) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

adder-reference: $(STAMP)
	$(LAB) experiment=adder_reference $(ARGS)

# the three layouts with both models
adder-encodings: $(STAMP)
	for enc in serial parallel flat; do for m in hand_lstm torch_lstm; do \
	  $(LAB) task.encoding=$$enc model=$$m trainer.progress=false $(ARGS) || exit 1; done; done

# SPEC.md experiment 2: sin -> cos, writes prediction.png and curves.png into the run directory
sin-cos: $(STAMP)
	$(LAB) task=sin_cos $(ARGS)

clean:
	rm -rf $(VENV) outputs/* multirun
