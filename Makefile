# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs leakstyle, runs the main job
#   make test   creates .venv, installs leakstyle with test tools, runs the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The browser test drives Debian's Chromium (root installs it; elsewhere install it yourself).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest

# Until the embedded model ships, the demo fits a style and generates with a model you name:
#   make demo MODEL=path/or/hub-id IMAGES=folder-of-style-images PROMPT="a photo of a cat"
MODEL ?=
IMAGES ?=
PROMPT ?= a photo of a cat
demo: $(STAMP)
	@test -n "$(MODEL)" -a -n "$(IMAGES)" || { echo "make demo needs MODEL=<diffusers folder or hub id> IMAGES=<folder of style images>"; exit 2; }
	$(VENV)/bin/leakstyle fit $(IMAGES) --model $(MODEL) -o leakstyle-demo/style.safetensors --force
	$(VENV)/bin/leakstyle generate --model $(MODEL) --style leakstyle-demo/style.safetensors --prompt "$(PROMPT)" \
		--num-images 4 --baseline --out leakstyle-demo --force
	@echo "images in leakstyle-demo/"

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) leakstyle-demo
