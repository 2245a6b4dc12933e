VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: test serve install system-deps clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The suite runs real programs (redis-server): installed when missing where possible, else a one-line stop.
system-deps:
	@bash scripts/system-deps.sh

test: system-deps $(STAMP)
	$(PY) -m pytest -q

serve: $(STAMP)
	$(VENV)/bin/restune serve --demo-if-empty --diffusion-model tiny-trained

clean:
	rm -rf $(VENV) build *.egg-info
