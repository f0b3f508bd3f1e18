# fraiseshm: `make run` serves the example blog schema on http://127.0.0.1:8000/graphql
# (private PostgreSQL cluster, one worker per core); `make run EXAMPLE=shop` the
# example shop (its own private cluster); `make test` runs every test.
.PHONY: run test perf faults campaign sanitize install clean

EXAMPLE ?= blog
# Each example other than the blog gets its own embedded cluster (both define fn_seed).
EXAMPLE_ENV = $(if $(filter blog,$(EXAMPLE)),FRAISESHM_DB_ROLE="$${FRAISESHM_DB_ROLE:-blog_web}",FRAISESHM_SCHEMA_SDL=examples/$(EXAMPLE)/schema.graphql \
	FRAISESHM_SCHEMA_SQL=examples/$(EXAMPLE)/schema.sql \
	FRAISESHM_EMBEDDED_DIR=$${TMPDIR:-/tmp}/fraiseshm-pg-$(EXAMPLE)-$$(id -u))

install:
	@bash scripts/bootstrap.sh test

# The blog has a private type (Draft), so the server needs a verified identity: a
# development secret unless FRAISESHM_JWT_SECRET is set (README, "Identity").
run: install
	FRAISESHM_JWT_SECRET="$${FRAISESHM_JWT_SECRET:-development-only-secret-not-for-production}" \
	$(EXAMPLE_ENV) .venv/bin/gunicorn -c gunicorn.conf.py

test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# the arena's C extension under ASan + UBSan (separate build in build-asan/): unit, property, multiprocess
sanitize: install
	bash scripts/sanitize.sh $(PYTEST_ARGS)

perf:
	@bash scripts/bootstrap.sh test,perf
	.venv/bin/python perf/run.py $(PERF_ARGS)

# Not part of `make test`: does the suite catch one-line faults (faults/manifest.toml)?
faults: install
	.venv/bin/python faults/run.py $(FAULT_ARGS)

# Not part of `make test`: 1,000 worker SIGKILLs under load, PostgreSQL restart, stopped listener, small /dev/shm.
campaign: install
	.venv/bin/python scripts/fault_campaign.py $(CAMPAIGN_ARGS)

clean:
	rm -rf .venv build build-asan *.egg-info fraiseshm/*.so .fraiseshm
