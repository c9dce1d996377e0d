# Two commands on a fresh machine: `make train` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test lint venv clean gin finetune

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# ruff, then the import contracts of pyproject.toml ([tool.importlinter]): an import
# against the direction of ARCHITECTURE.md fails `make lint` and so `make test`.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-logo

test: $(STAMP) lint
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -n 2 --dist loadfile tests

train: $(STAMP)
	$(PY) run_train.py

# The example fine-tuning (README "Fine-tuning"): the make-train base if missing, the
# word-order task files if missing, then 300 steps of GPT-2 sequence classification.
finetune: $(STAMP)
	test -d runs/default/checkpoints || $(PY) run_train.py
	test -f runs/tasks/word_order/train.jsonl || $(PY) -m t5x_lite.data.kjv_tasks build \
	  --task=word_order --out=runs/tasks/word_order
	$(PY) run_train.py --config=configs/finetune/kjv_word_order_gpt2.py \
	  --config.train.init_from=runs/default --workdir=runs/ft_word_order_gpt2

# Regenerate gin/NAME.gin from configs/NAME.py for every preset (a test checks they agree).
gin: $(STAMP)
	for f in configs/*.py; do n=$$(basename $$f .py); \
	  case $$n in __init__|base) continue;; esac; \
	  $(PY) -m t5x_lite.gin_config $$n > gin/$$n.gin; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
