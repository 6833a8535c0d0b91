# Every target creates the virtual environment first; `make quickstart` and `make test` work on a fresh clone.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# Written once the project is installed into $(VENV): a venv made by hand (or an older one) still gets the
# project, and a change of setup.cfg or pyproject.toml installs it again.
INSTALLED := $(VENV)/.installed
# PyTorch's CPU-only build on machines without an NVIDIA GPU (no `nvidia-smi`): about 0.7 GB instead of the
# default build's 5 GB of CUDA libraries. `make install TORCH_INDEX=` keeps the default build (GPU users on a
# machine without nvidia-smi); TORCH_INDEX=URL picks another index. An index that cannot be reached is
# skipped with a message: PyTorch then comes from the default index.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,$(TORCH_CPU_INDEX))
# Offline copy of MNIST beside the project when present, else the Hub.
MNIST ?= $(if $(wildcard ../shared/data/mnist),../shared/data/mnist,ylecun/mnist)
QUICKSTART_DIR ?= outputs/quickstart

.PHONY: install quickstart test lint sample demo docs experiments report

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if [ -z "$(TORCH_INDEX)" ] || $(BIN)/python -m pip show --quiet torch >/dev/null 2>&1; then \
		:; \
	elif $(BIN)/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=20)' \
			'$(TORCH_INDEX)/torch/' >/dev/null 2>&1; then \
		echo "Installing PyTorch from $(TORCH_INDEX) (TORCH_INDEX= for the default build)"; \
		$(BIN)/python -m pip install --quiet torch torchvision --index-url '$(TORCH_INDEX)' \
			|| echo "PyTorch from $(TORCH_INDEX) failed; it comes from the default index"; \
	else \
		echo "$(TORCH_INDEX) cannot be reached; PyTorch comes from the default index"; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[dev,demo]'
	touch $@

install: $(INSTALLED)

quickstart: install
	$(BIN)/accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		training/train.py --config training/configs/quickstart.yaml --dataset_name $(MNIST) --output_dir $(QUICKSTART_DIR)
	$(BIN)/python scripts/sample.py --model $(QUICKSTART_DIR) --num_images 64 --seed 0 \
		--output $(QUICKSTART_DIR)/samples.png

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# The report's runs (about 2 hours on 2 cores; a stopped call resumes), then its PDF (needs pdflatex).
experiments: install
	$(BIN)/python scripts/run_experiments.py --jobs 2 --dataset_name $(MNIST)

report: install
	$(BIN)/python scripts/report_assets.py --report_dir report --pdf report/report.pdf

demo: install
	$(BIN)/python scripts/demo.py --model $(QUICKSTART_DIR)

docs: install
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html
