# Two commands matter on a fresh machine:  `make demo`  and  `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
OUT    ?= runs/demo

.PHONY: setup demo test clean

setup: $(VENV)/.installed

# uv resolves and installs in seconds. --compile-bytecode: every Ray worker imports torch, and
# with PYTHONDONTWRITEBYTECODE set (as on these machines) it would recompile it each time (~10 s).
# On a machine with no NVIDIA GPU we install torch's CPU
# build first when pip's find-links offer one (the registry's Linux torch is the ~6 GB CUDA build);
# torch>=2.9 is then already satisfied. mup's torchvision/seaborn are dropped by [tool.uv] overrides.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m pip install -q uv
	$(PYTHON) -m uv venv -q --allow-existing -p 3.11 $(VENV)
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  for d in $$(echo "$${PIP_FIND_LINKS:-} /opt/wheels" | tr ' ' '\n' | sort -u); do \
	    w=$$(ls $$d/torch-*+cpu-cp311-*.whl 2>/dev/null | sort -V | tail -n 1); \
	    if [ -n "$$w" ]; then echo "CPU torch: $$w"; $(PYTHON) -m uv pip install -q --python $(BIN)/python --compile-bytecode --no-deps "$$w"; break; fi; \
	  done; \
	fi
	$(PYTHON) -m uv pip install -q --python $(BIN)/python --compile-bytecode -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/telescope run sweeps/demo.toml --out $(OUT)
	$(BIN)/telescope export $(OUT) --width 1024

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
