# mmdist: set-up, tests and demo.
PYTHON := .venv/bin/python

.PHONY: install test test-fast clean

# Idempotent: a second run checks each piece and finishes in seconds.
install:
	bash tools/install_env.sh

# The whole suite (about 15 minutes on 2 cores); sets up the venv first.
test: install
	$(PYTHON) -m pytest tests -v

# Everything but the cases marked heavy.
test-fast: install
	$(PYTHON) -m pytest tests -v -m "not heavy"

clean:
	rm -rf work_dirs .pytest_cache
