# mmdist: set-up, tests and demo.
PYTHON := .venv/bin/python

TASK ?= all
ITERS ?= 250
TEACHER_ITERS ?=
IMAGES ?= 400
SEEDS ?= 1

.PHONY: install test test-fast demo clean

# Idempotent: a second run checks each piece and finishes in seconds.
install:
	bash tools/install_env.sh

# The whole suite (609 tests, about 23 minutes on 2 cores); sets up the venv
# first.
test: install
	$(PYTHON) -m pytest tests -v

# Everything but the cases marked heavy.
test-fast: install
	$(PYTHON) -m pytest tests -v -m "not heavy"

# KD vs DIST on built-in synthetic data (detection and segmentation), with a
# report in work_dirs/demo/. TASK=det|seg|all, ITERS (students),
# TEACHER_ITERS (default 1000 for det, 500 for seg), IMAGES, SEEDS (the
# students trained with seeds 0..SEEDS-1, mean and std reported),
# TEACHER_PRECISION=float32|bf16 (default: the demo configs' bf16).
demo: install
	$(PYTHON) tools/demo.py --task $(TASK) --iters $(ITERS) $(if $(TEACHER_ITERS),--teacher-iters $(TEACHER_ITERS)) --images $(IMAGES) --seeds $(SEEDS) $(if $(TEACHER_PRECISION),--teacher-precision $(TEACHER_PRECISION))

clean:
	rm -rf work_dirs .pytest_cache
