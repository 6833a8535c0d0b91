# Every target creates the virtual environment first; `make quickstart` and `make test` work on a fresh clone.
VENV ?= .venv
BIN := $(VENV)/bin
# Offline copy of MNIST beside the project when present, else the Hub.
MNIST ?= $(if $(wildcard ../shared/data/mnist),../shared/data/mnist,ylecun/mnist)
QUICKSTART_DIR ?= outputs/quickstart

.PHONY: install quickstart test lint sample demo docs experiments report

$(BIN)/activate: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,demo]'
	touch $@

install: $(BIN)/activate

quickstart: install
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		training/train.py --config training/configs/quickstart.yaml --dataset_name $(MNIST) --output_dir $(QUICKSTART_DIR)
	$(BIN)/python scripts/sample.py --model $(QUICKSTART_DIR) --num_images 64 --sampler dpmsolver \
		--num_inference_steps 25 --seed 0 --output $(QUICKSTART_DIR)/samples.png

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
