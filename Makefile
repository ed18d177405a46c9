# `make train`, `make chat-demo` and `make test` each create .venv with the pinned dependencies when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test train chat-demo clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# a real browser for the tests of the HTML pages (gptoss inspect's report, gptoss serve's page)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

train: $(STAMP)
	$(PY) train.py

# pretrain a tiny model, fine-tune it into a chat model (full and LoRA), measure it before and after (docs/finetuning.md)
chat-demo: $(STAMP)
	$(PY) examples/chat_demo.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
