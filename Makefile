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

.PHONY: install test demo bench lint clean gpu-wheels

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

# Wheels that the GPU image lacks, for benchmarks/gpu_check.sh on a machine without network (Python 3.12
# on x86_64): carry gpu_wheels/ along with the working tree. The image has numpy, scipy, scikit-learn,
# joblib, numba, msgpack, lazy-loader, packaging, requests and typing-extensions, but not soundfile,
# librosa, soxr, audioread, pooch, platformdirs, decorator, soundfile's cffi/pycparser nor constriction
# (the codec's range coder); gpu_check.sh
# installs these with --no-index --no-deps into a folder of its own. Any python with pip will do (no
# .venv needed); one pinned version of each, the folder made afresh so no second version lingers.
GPU_WHEELS = soundfile==0.14.0 librosa==0.11.0 soxr==1.1.0 audioread==3.1.0 pooch==1.9.0 \
	platformdirs==4.14.8 decorator==5.3.1 cffi==2.1.1 pycparser==3.12 constriction==0.5.0
gpu-wheels:
	rm -rf gpu_wheels
	$(PYTHON) -m pip download --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform any -d gpu_wheels $(GPU_WHEELS)
