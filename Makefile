# Entry points; the scripts install what they need first (scripts/setup.sh).
.PHONY: bench test run

# Every benchmark, then a BENCHMARKS.md-ready report in bench/results/<UTC time>/
# (~1 h on 2 cores; knobs: see scripts/bench.sh or bench/README.md).
bench:
	./scripts/bench.sh

test:
	./scripts/test.sh

# The fraud-scoring example on the embedded broker.
run:
	./scripts/run-example.sh
