# fieldkit: `make demo` runs a demo kit, `make test` runs every test.
.ONESHELL:
.SHELLFLAGS := -ec
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DATA ?= demo-data
DEMO_PORT ?= 8443
DEMO_DICOM_PORT ?= 11112
PEERS := dcmtk orthanc orthanc-dicomweb chromium systemd swtpm swtpm-tools tpm2-tools dicom3tools

.PHONY: demo test soak bench mutate install install-test peers clean docs i18n

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The real peers the tests talk to. Installed when missing and we are root.
peers:
	@if command -v storescu >/dev/null && command -v Orthanc >/dev/null && command -v systemd-analyze >/dev/null && [ -x /usr/bin/chromium ] \
	    && command -v swtpm >/dev/null && command -v tpm2_createprimary >/dev/null && command -v dciodvfy >/dev/null \
	    && dpkg -s orthanc-dicomweb >/dev/null 2>&1; then \
	  echo "peers present: $(PEERS)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PEERS) >/dev/null; \
	else \
	  echo "not root: install $(PEERS) with apt-get to run every test"; \
	fi

demo: install
	$(BIN)/fieldkit demo --data-dir $(DEMO_DATA) --http-port $(DEMO_PORT) --dicom-port $(DEMO_DICOM_PORT)

# Two workers, a test file each at a time: most tests wait on real peers and kit processes.
# The 25 slowest tests are listed at the end, to keep the suite under its 20 minutes.
TEST_WORKERS ?= 2

test: install-test peers
	# byte-compile once: where the environment forbids writing bytecode, every kit process
	# a test starts compiled the whole package again (0.2 s each)
	$(BIN)/python -m compileall -q fieldkit tests >/dev/null
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=25

# 20 000 simulated power cuts (POWERCUT_CUTS; prints cuts per second) and 500 SIGKILL rounds
soak: install-test peers
	POWERCUT_CUTS=20000 CRASH_ROUNDS=500 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_powercut.py tests/test_crash.py $(SOAK_TESTS)

# Mutation testing of the modules that hold the promises (tests/mutation/modules.toml), one
# module at a time at low priority; MUTATE_ONLY=fieldkit/store/queue.py runs one module,
# MUTATE_SHARD=1/2 every second module (to split the run across machines).
mutate: install-test
	$(BIN)/python tests/mutation/run.py $(if $(MUTATE_ONLY),--only $(MUTATE_ONLY)) $(if $(MUTATE_SHARD),--shard $(MUTATE_SHARD)) $(if $(MUTATE_JOBS),--jobs $(MUTATE_JOBS))

bench: install-test peers
	@for b in tests/bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info

# Regenerate the README's settings table from fieldkit/config.py.
docs: install
	$(BIN)/python - <<'PY'
	import re, pathlib
	from fieldkit.config import settings_markdown
	p = pathlib.Path("README.md"); t = p.read_text()
	t = re.sub(r"<!-- settings -->.*<!-- /settings -->", lambda m: "<!-- settings -->\n" + settings_markdown() + "\n<!-- /settings -->", t, flags=re.S)
	p.write_text(t)
	PY

# The UI's languages: find new texts, add them to each messages.po (translate the empty ones),
# compile the .mo files and the scripts' catalogues (static/i18n/<lang>.json).
i18n: install
	$(BIN)/python -m fieldkit.web.i18n_catalogues
