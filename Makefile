# pdist: `make run` runs the default experiment, `make test` runs the test suite.
# Both build .venv from the pinned requirements.txt first (again whenever it changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/mnist1d_cnn

.PHONY: run test test-all bench notebooks reproduce venv clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -c 'import sysconfig, os; open(os.path.join(sysconfig.get_paths()["purelib"], "pdist-src.pth"), "w").write(os.getcwd() + "\n")'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m pdist --config experiments/mnist1d.py:cnn --workdir $(WORKDIR)
	$(PY) -m pdist.plots $(WORKDIR)

# two workers (the machine's two cores); files that start Ray share one worker (xdist_group)
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 -m "not long" tests

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 tests

# every paper in experiments/papers/ (~45 minutes on 2 cores): REPRODUCTIONS.md, figures in
# docs/reproductions/; `python -m pdist.reproduce --only NAME --markdown REPRODUCTIONS.md` redoes one
reproduce: $(STAMP)
	$(PY) -m pdist.reproduce --workdir runs/reproduce --markdown REPRODUCTIONS.md

notebooks: $(STAMP)
	$(PY) tools/make_notebooks.py

bench: $(STAMP)
	$(PY) benchmarks/single_device.py

clean:
	rm -rf $(VENV) runs
