# fraiseshm: `make run` serves the example blog schema on http://127.0.0.1:8000/graphql
# (private PostgreSQL cluster, one worker per core); `make test` runs every test.
.PHONY: run test perf faults campaign install clean

install:
	@bash scripts/bootstrap.sh test

run: install
	.venv/bin/gunicorn -c gunicorn.conf.py

test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

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
	rm -rf .venv build *.egg-info fraiseshm/*.so .fraiseshm
