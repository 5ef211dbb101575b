# Two entry points for a fresh machine; both create and use the virtual environment at .venv.
#   make run   set up, then run the paper-table sweep on the embedded Concept World
#   make test  set up, then run the test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
COMPILED := $(VENV)/.compiled
# the venv's site-packages (a shell expansion: read when a recipe runs, after the venv exists)
PURELIB := $$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# the reproducible mode's CPU pin (harness/numerics.py: CPU_PIN; a test keeps the two equal)
PINNED := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE,STRICT ONEDNN_MAX_CPU_ISA=AVX2
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
WORKERS := $(shell echo $$(( $$(nproc) + 1 )))

.PHONY: setup run test smoke gpu-carry
setup: $(STAMP) $(COMPILED)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --no-compile -e '.[test]'
	touch $(STAMP)

# Bytecode for every installed module, compiled once on all cores. Python does not cache it on
# its own where PYTHONDONTWRITEBYTECODE is set (as on the hosts this project is built and tested
# on): every process then compiled torch, diffusers, transformers and MLflow from source again,
# and `import harness.runner` took 14 CPU-s instead of 6 (session 26). Some of torch's files are
# written for newer Pythons and cannot compile here; Python could not import them either, so
# they are counted, not fatal.
$(COMPILED): $(STAMP)
	$(VENV)/bin/python -m compileall -q -j 0 $(PURELIB) \
	  > $(VENV)/compileall.log || echo "setup: $$(grep -c '^\*\*\* Error' $(VENV)/compileall.log) file(s) left as source, see $(VENV)/compileall.log (here: torch's one for Python 3.12)"
	touch $(COMPILED)

run: setup
	$(VENV)/bin/python -m harness -m sweep=paper_table

smoke: setup
	$(VENV)/bin/python -m harness -m sweep=smoke

test: setup
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }  # the MLflow UI test
	@# one pytest worker per core and one more (WORKERS): the SLURM, tuning and UI tests spend much
	@# of their time waiting on jobs and servers, so with one per core a core sat idle about a third of
	@# the main pass (session 21: 1,758 s with 2 workers, 1,603 s with 3, the same suite and host);
	@# a test module per worker (module fixtures stay in one process),
	@# the longest modules first (tests/conftest.py: LONGEST_FIRST); each worker one thread: two workers with torch's
	@# default of every core spin against each other (a tiny bilevel step took 8.8 s instead of 0.3 s);
	@# the cells a test starts with 2 threads of their own (reproducible mode, SLURM jobs) wait for
	@# work asleep, not spinning (OMP_WAIT_POLICY=PASSIVE: a 2-thread conv step beside a busy core
	@# took 14 ms instead of 105-209 ms); the wait policy changes no arithmetic
	$(TEST_ENV) $(VENV)/bin/python -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder
	@# the numerics-sensitive tests again with torch, MKL and oneDNN pinned to AVX2 kernels (harness/numerics.py):
	@# tolerances must hold under both kernel sets, whichever this CPU runs by default; test by test
	@# (none shares a module fixture), so the two data-parallel comparisons run side by side
	$(TEST_ENV) $(PINNED) $(VENV)/bin/python -m pytest -m numerics -p no:cacheprovider -n auto --dist load

# For a lent GPU machine that has torch and transformers but not this project's pure-Python
# packages: they travel as one archive (harness/bench/lent_gpu.sh unpacks it; .gpu/ is ignored)
CARRIED := diffusers hydra hydra_plugins omegaconf antlr4 torch_pruning submitit cleanfid
gpu-carry: setup
	mkdir -p .gpu
	cd $(PURELIB) && \
	  tar --exclude=__pycache__ -czf $(CURDIR)/.gpu/site.tar.gz $(CARRIED) \
	  $$(for p in $(CARRIED); do ls -d $$(echo $$p | sed 's/^hydra$$/hydra_core/;s/^cleanfid$$/clean_fid/;s/^antlr4$$/antlr4_python3_runtime/;s/^hydra_plugins$$/hydra_submitit_launcher/')-*.dist-info; done)
	@ls -l .gpu/site.tar.gz
