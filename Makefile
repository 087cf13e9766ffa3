# mmdist: set-up, tests and demo.
PYTHON := .venv/bin/python

TASK ?= all
ITERS ?= 250
TEACHER_ITERS ?=
IMAGES ?= 400
SEEDS ?= 1

.PHONY: install test test-all demo clean

# Idempotent: a second run checks each piece and finishes in seconds.
install:
	bash tools/misc/install_env.sh

# The quick suite: every task built and stepped, the docs build and lint;
# sets up the venv first.
test: install
	$(PYTHON) -m pytest tests -v -m "not heavy" --durations=25

# The cases marked heavy (family matrix, end-to-end runs through tools/,
# multi-process training), after the quick suite: the whole suite.
test-all: test
	$(PYTHON) -m pytest tests -v -m heavy --durations=25

# KD vs DIST on built-in synthetic data (detection and segmentation), with a
# report in work_dirs/demo/. TASK=det|seg|all, ITERS (students),
# TEACHER_ITERS (default 1000 for det, 500 for seg), IMAGES, SEEDS (the
# students trained with seeds 0..SEEDS-1, mean and std reported),
# TEACHER_PRECISION=float32|bf16 (default: the demo configs' bf16).
demo: install
	$(PYTHON) tools/misc/demo.py --task $(TASK) --iters $(ITERS) $(if $(TEACHER_ITERS),--teacher-iters $(TEACHER_ITERS)) --images $(IMAGES) --seeds $(SEEDS) $(if $(TEACHER_PRECISION),--teacher-precision $(TEACHER_PRECISION))

clean:
	rm -rf work_dirs .pytest_cache
