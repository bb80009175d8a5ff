# lstmlab: `make run` installs into .venv and runs the default experiment; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
PY      = $(BIN)/python
LAB     = $(BIN)/lstmlab
STAMP   = $(VENV)/.installed

.PHONY: help install run test bench adder-reference adder-encodings sin-cos compare sweep-hidden imdb imdb-reference clean

help:
	@echo "make run | test | bench | install [TORCH=spec] | adder-reference | adder-encodings | sin-cos | compare | sweep-hidden | imdb | imdb-reference"

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

# SPEC.md experiment 2: sin -> cos, writes prediction.png and curves.png into the run directory
sin-cos: $(STAMP)
	$(LAB) task=sin_cos $(ARGS)

# SPEC.md experiment 3: torch_lstm, bidirectional torch_lstm, hand_lstm, bidirectional hand_lstm
# on the adder, same seeds, one table (a CPU-sized adder: 2,000 training pairs, 3 epochs).
# Running it again into the same directory only runs the jobs that have not finished.
SMALL_ADDER = task=adder task.train_size=2000 task.test_size=1000 task.eval_size=500 \
              trainer.max_epochs=3 trainer.target_metric=null trainer.progress=false
compare: $(STAMP)
	$(LAB) -m model=torch_lstm,hand_lstm model.bidirectional=false,true seed=0,1,2 $(SMALL_ADDER) \
	  hydra.sweep.dir=multirun/compare $(ARGS); status=$$?; \
	$(BIN)/lstmlab-report multirun/compare --metrics exhaustive_acc,test_loss,params,sec_per_epoch --plot \
	  && exit $$status

# accuracy and time vs hidden size on the adder
sweep-hidden: $(STAMP)
	$(LAB) -m model.hidden_size=4,8,16,32 seed=0,1,2 $(SMALL_ADDER) \
	  hydra.sweep.dir=multirun/sweep_hidden $(ARGS); status=$$?; \
	$(BIN)/lstmlab-report multirun/sweep_hidden --metrics exhaustive_acc,acc_32bit,test_loss,params,sec_per_epoch \
	  --plot && exit $$status

# IMDB: the offline copies in ../shared/data are used when present; otherwise the config's
# data/aclImdb_v1.tar.gz is downloaded (GloVe: put glove.6B.100d.txt or glove.6B.zip in data/).
IMDB_DATA  ?= ../shared/data/imdb/aclImdb_v1_labeled.tar.gz
GLOVE_DATA ?= ../shared/data/glove/glove.6B.100d.imdb.txt.gz
# a path you give (IMDB_DATA=... on the command line or in the environment) is always passed on,
# so a mistyped one fails naming it; the defaults only where they exist; an empty one, never
given_or_present = $(and $(strip $($(1))),$(or $(wildcard $($(1))),$(filter-out file,$(origin $(1)))))
IMDB_ARGS   = $(if $(call given_or_present,IMDB_DATA),task.data_path=$(IMDB_DATA))
GLOVE_ARGS  = $(if $(call given_or_present,GLOVE_DATA),task.glove_path=$(GLOVE_DATA))

# the CPU setup: >= 87% on the full official test split on 2 CPU cores
imdb: $(STAMP)
	$(LAB) experiment=imdb_cpu $(IMDB_ARGS) $(ARGS)

# the note's 2-layer BiLSTM with GloVe, meant for a GPU
imdb-reference: $(STAMP)
	$(LAB) experiment=imdb_reference trainer.device=cuda $(IMDB_ARGS) $(GLOVE_ARGS) $(ARGS)

clean:
	rm -rf $(VENV) outputs/* multirun
