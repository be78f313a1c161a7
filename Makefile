.PHONY: run test lint bench env-example js-client

run:  ## run the service on http://localhost:8000 (embedded defaults)
	scripts/serve

test:  ## lint, type-check and run the whole test suite
	scripts/test

bench:  ## print the benchmark table (see docs/BENCHMARKS.md); options: make bench ARGS='--backend pg'
	scripts/bootstrap && .venv/bin/python benchmarks/bench.py $(ARGS)

env-example:  ## regenerate .env.example from the settings
	scripts/bootstrap && .venv/bin/midori-preview env-example > .env.example

js-client:  ## copy the served browser client into its npm package (clients/js/)
	cp src/midori_preview/web/static/preview-client.js clients/js/preview-client.js
