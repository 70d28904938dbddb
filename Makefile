# The README's commands. `make test` and `make demo` install first (once; again only when pyproject.toml changes).
#
# GPU users keep their own CUDA torch: either point VENV at an environment that already has torch
# (`make install VENV=/opt/conda`; an importable torch is never replaced), or let the venv see the
# system's packages (`make install VENV_FLAGS=--system-site-packages`), or choose the torch to install
# (`make install TORCH_SPEC="torch==2.13.0"` with your index).
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
# This machine has the CPU build of torch 2.13.0 on disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.txl_audio_installed

.PHONY: install test demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@$(PY) -c "import torch" 2>/dev/null && echo "keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')" \
		|| $(PY) -m pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	@touch $@

test: install
	$(PY) -m pytest -q

demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash recipes/quickstart.sh

bench: install
	$(PY) benchmarks/run_all.py

lint: install
	$(VENV)/bin/ruff check txl_audio tests benchmarks recipes

clean:
	rm -rf runs/demo benchmarks/results
