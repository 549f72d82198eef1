# The two commands of the quick start: `make bench` and `make test`.
# Each creates .venv if missing, installs ipugraph into it (torch pinned to the
# CPU wheel, 2.13.0), rebuilds the C++ extension when csrc/ changed, then runs.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ipugraph-installed
EXT    := ipugraph/.ext-stamp
CSRC   := $(wildcard csrc/*.cpp csrc/*.h) ipugraph/ops/pointwise.py
BATCH  ?= 8

.PHONY: all install ext sysdeps test bench clean

# Debian packages the suite needs: headless Chromium and its driver (the report.html test).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
sysdeps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	    ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver)

all: test

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "setuptools>=64" wheel "pybind11>=2.11" "numpy>=1.24"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@ $(EXT)

install: $(STAMP)

# The build tools live in .venv (no build isolation) so that build_ext below
# uses the same pybind11. The editable install builds the extension once; later edits to csrc/ rebuild it here.
# (Skipped when every ISA build is newer than every source: the install has just built them.)
$(EXT): $(STAMP) $(CSRC)
	@oldest=$$(ls -t ipugraph/_C_*.so 2>/dev/null | tail -1); \
	if [ -n "$$oldest" ] && [ -z "$$(find $(CSRC) setup.py -newer $$oldest)" ]; then \
	    echo "C++ extension up to date ($$(ls ipugraph/_C_*.so | wc -l) ISA builds)"; \
	else $(PY) setup.py -q build_ext --inplace; fi
	touch $@

ext: $(EXT)

test: $(EXT) sysdeps
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(PY) -m pytest -q tests

bench: $(EXT)
	$(VENV)/bin/ipugraph bench resnet34 --backend cpu --batch $(BATCH) --image-size 224 \
	    --compare all --profile --json bench/results/resnet34_cpu_b$(BATCH).json
	@if $(PY) -c "import ipugraph.viz as v, sys; sys.exit(0 if hasattr(v, 'dump') else 1)" 2>/dev/null; then \
	    $(VENV)/bin/ipugraph dump resnet34 --target ipu-mk2 --batch 1 --out out/resnet34-mk2; \
	else echo "(tile-placement pictures: ipugraph.viz.dump not available yet)"; fi

clean:
	rm -rf build *.egg-info ipugraph/_C*.so $(EXT)
