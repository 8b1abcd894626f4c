# agglom — `make help` lists the targets. Every target that needs the environment depends on `install`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export PYTHONUNBUFFERED := 1
RECIPE ?= recipes/demo.yaml
ARGS ?=
NUM_GPUS ?= 1
HOSTFILE ?=
PYTEST_ARGS ?=

.PHONY: help install test test-fast lint data demo train train-ds sweep bench bench-gpu bench-real clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" >/dev/null
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	# compat mode puts the checkout on sys.path (a .pth line) instead of an import hook, so a `teachers/` folder in
	# the user's working directory can never shadow the teacher zoo as a namespace package
	$(PY) -m pip install -q -e ".[dev,tensorboard,litemedsam,onnx]" --config-settings editable_mode=compat
	# DeepSpeed's CPU accelerator JIT-builds a C++ comm op the first time it starts with a given TORCH_EXTENSIONS_DIR
	# (~35 s on 2 cores). Build it once here, into the folder make's targets and the tests use, so that neither a
	# first CPU DeepSpeed run nor `make test` stalls on it; without a C++ compiler only the note is printed and
	# DeepSpeed builds (or fails) at first use, as before
	@DS_ACCELERATOR=cpu $(PY) -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load(verbose=False)" \
		>/dev/null 2>&1 && echo "DeepSpeed's CPU comm op: built in $(TORCH_EXTENSIONS_DIR)" \
		|| echo "note: DeepSpeed's CPU comm op did not build here (no C++ compiler?); DeepSpeed on CPU will try at first use"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install agglom with its dependencies (idempotent)

SYNTH := data/synth/dataset.json
DEMO_DATA := $(if $(filter recipes/demo.yaml,$(RECIPE)),$(SYNTH))

$(SYNTH): | $(STAMP)
	$(VENV)/bin/agglom data synth out=data/synth force=true

test: install ## run the test suite (the CI command)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -rs --timeout=1200 -n 2 --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

test-fast: install ## the suite without the slow end-to-end tests
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff over the code and the import contract: no circles, teachers/ never imports agglom/, imports go down the floors (tools/import_check.py)
	$(VENV)/bin/ruff check agglom teachers tests tools benchmarks
	$(PY) tools/import_check.py

data: install ## generate the synthetic bias benchmark into data/synth
	$(VENV)/bin/agglom data synth out=data/synth force=true

demo: install ## the main job on the embedded default (synthetic benchmark, tiny teachers, CPU)
	$(PY) -m agglom.demo $(ARGS)

train: install $(DEMO_DATA) ## train: make train RECIPE=recipes/demo.yaml ARGS="optim.steps=100"
	$(VENV)/bin/agglom train recipe=$(RECIPE) $(ARGS)

train-ds: install $(DEMO_DATA) ## DeepSpeed launcher: make train-ds RECIPE=... NUM_GPUS=8 HOSTFILE=hosts DRY_RUN=1
	$(PY) -m agglom.engine.launch recipe=$(RECIPE) num_gpus=$(NUM_GPUS) hostfile=$(HOSTFILE) dry_run=$(if $(DRY_RUN),true,false) -- $(ARGS)

sweep: install $(DEMO_DATA) ## lambda sweep + Pareto front: make sweep RECIPE=... ARGS="sweep.lams=[0,1,4]"
	$(VENV)/bin/agglom sweep recipe=$(RECIPE) $(ARGS)

bench: install ## benchmarks (ratios vs baselines measured in the same run); writes bench.json
	$(PY) -m benchmarks.bench $(ARGS)

bench-gpu: install ## the same benchmarks at realistic sizes on a GPU
	$(PY) -m benchmarks.bench device=cuda size=realistic $(ARGS)

bench-real: install ## the real-teacher benchmark: LiteMedSAM (offline weights) into a student, per-group tables, timed
	$(PY) -m benchmarks.real_teacher $(ARGS)

clean: ## remove runs/, data/ and caches (keeps .venv)
	rm -rf runs data bench.json .pytest_cache
