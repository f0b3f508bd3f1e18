# fraiseshm: `make run` serves the example blog schema on http://127.0.0.1:8000/graphql
# (private PostgreSQL cluster, one worker per core); `make run EXAMPLE=shop` the
# example shop (its own private cluster); `make test` runs every test.
.PHONY: run test perf install clean

EXAMPLE ?= blog
# Each example other than the blog gets its own embedded cluster (both define fn_seed).
EXAMPLE_ENV = $(if $(filter blog,$(EXAMPLE)),,FRAISESHM_SCHEMA_SDL=examples/$(EXAMPLE)/schema.graphql \
	FRAISESHM_SCHEMA_SQL=examples/$(EXAMPLE)/schema.sql \
	FRAISESHM_EMBEDDED_DIR=$${TMPDIR:-/tmp}/fraiseshm-pg-$(EXAMPLE)-$$(id -u))

install:
	@bash scripts/bootstrap.sh test

run: install
	$(EXAMPLE_ENV) .venv/bin/gunicorn -c gunicorn.conf.py

test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

perf:
	@bash scripts/bootstrap.sh test,perf
	.venv/bin/python perf/run.py $(PERF_ARGS)

clean:
	rm -rf .venv build *.egg-info fraiseshm/*.so .fraiseshm
