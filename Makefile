# fraiseshm: `make run` serves the example blog schema on http://127.0.0.1:8000/graphql
# (private PostgreSQL cluster, one worker per core); `make test` runs every test.
.PHONY: run test perf install clean sanitize

install:
	@bash scripts/bootstrap.sh test

run: install
	.venv/bin/gunicorn -c gunicorn.conf.py

test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# the arena's C extension under ASan + UBSan (separate build in build-asan/): unit, property, multiprocess
sanitize: install
	bash scripts/sanitize.sh $(PYTEST_ARGS)

perf:
	@bash scripts/bootstrap.sh test,perf
	.venv/bin/python perf/run.py $(PERF_ARGS)

clean:
	rm -rf .venv build build-asan *.egg-info fraiseshm/*.so .fraiseshm
