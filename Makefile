# classdiff: the two commands of the README do all set-up on a fresh machine.
#   make demo   install, get Fashion-MNIST, run the default end-to-end job on CPU
#   make test   install and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch; a looser pin would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP := $(VENV)/.installed

.PHONY: install data browser test demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(FIND_LINKS) "$(TORCH_PIN)"
	$(PIP) install --quiet $(FIND_LINKS) "$(TORCH_PIN)" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from Debian's package when we are root with apt; otherwise explain.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -n "$$FASHION_MNIST_DIR" ]; then \
	  echo "Fashion-MNIST: found"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) && \
	  echo "Fashion-MNIST: installed (Debian package dataset-fashion-mnist)" || \
	  echo "Fashion-MNIST: could not install dataset-fashion-mnist; set FASHION_MNIST_DIR to a folder with the four idx files"; \
	else \
	  echo "Fashion-MNIST: not found. Run 'sudo apt-get install dataset-fashion-mnist' or set FASHION_MNIST_DIR to a folder holding the idx files."; \
	fi

# Headless Chromium renders the HTML report in a test (Debian's package, when we are root with apt).
browser:
	@if command -v chromium >/dev/null 2>&1; then \
	  echo "chromium: found"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) && \
	  echo "chromium: installed" || echo "chromium: could not be installed; the browser test will be skipped"; \
	else \
	  echo "chromium: not found; the browser test of the HTML report will be skipped"; \
	fi

test: $(STAMP) data browser
	$(PY) -m pytest -q

demo: $(STAMP) data
	$(VENV)/bin/classdiff demo

# the peer rows (diffusers, faiss-cpu) need the bench extra; a row that cannot run fails the target
bench: $(STAMP) data
	$(PIP) install --quiet $(FIND_LINKS) "$(TORCH_PIN)" -e ".[dev,bench]"
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
