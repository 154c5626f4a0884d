# pybeam: `make demo` and `make test` do all setup on a fresh Debian machine that has
# Rust and Python 3 (see scripts/ensure-deps.sh).

# The Python that pyo3 builds against, and therefore the one embedded at runtime.
PYO3_PYTHON ?= $(shell command -v python3)
export PYO3_PYTHON

REBAR ?= rebar3
EBIN = _build/default/lib/pybeam/ebin
LOGS = .test-logs

.PHONY: all deps build test ci demo bench dialyzer docs conformance clean

all: build

deps:
	@sh scripts/ensure-deps.sh

build: deps
	$(REBAR) compile

test: build
	@sh scripts/run-tests.sh $(LOGS)

# What .ci/run runs: every test, then the conformance run, with one summed total.
ci: build
	@sh scripts/run-tests.sh $(LOGS) --conformance

conformance: build
	@sh scripts/conformance.sh $(LOGS)/conformance

demo: build
	escript examples/demo.escript
	elixir -pa $(EBIN) examples/demo.exs

bench: build
	@BENCH="$(BENCH)" sh scripts/run-bench.sh

dialyzer: build
	$(REBAR) dialyzer

docs: build
	$(REBAR) edoc

clean:
	$(REBAR) clean
	rm -rf _build $(LOGS) priv/py_nif.so
	cd native && cargo clean
