# lstmlab: `make run` installs into .venv and runs the default experiment; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
PY      = $(BIN)/python
LAB     = $(BIN)/lstmlab
STAMP   = $(VENV)/.installed

.PHONY: help install run test bench adder-reference adder-encodings clean

help:
	@echo "make run | test | bench | install [TORCH=spec] | adder-reference | adder-encodings"

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

# forward+backward time of the hand-built layers against nn.LSTM; BENCH_ARGS="--device cuda" etc.
bench: $(STAMP)
	$(PY) -m lstmlab.bench $(BENCH_ARGS)

adder-reference: $(STAMP)
	$(LAB) experiment=adder_reference $(ARGS)

# the three layouts with both models
adder-encodings: $(STAMP)
	for enc in serial parallel flat; do for m in hand_lstm torch_lstm; do \
	  $(LAB) task.encoding=$$enc model=$$m trainer.progress=false $(ARGS) || exit 1; done; done

clean:
	rm -rf $(VENV) outputs/* multirun
