# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs leakstyle, runs the main job
#   make test   creates .venv, installs leakstyle with test tools, runs the tests
# Both install every extra (diffusers, finetune, ui, report) and ComfyUI's requirements for the node-pack tests,
# which run ComfyUI from ../shared/ComfyUI or $COMFYUI_PATH and skip without it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all,scale,dev,comfyui-test]'
	$(PY) -m pip install --quiet --no-deps torchsde  # ComfyUI's SDE samplers; it depends on torch: keep the pinned one
	touch $(STAMP)

# The browser test drives Debian's Chromium (root installs it; elsewhere install it yourself).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest

# The main job: the whole method on the embedded miniature model, offline, on a CPU, in about a minute.
demo: $(STAMP)
	$(VENV)/bin/leakstyle demo --force

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) leakstyle-demo
