# mlex-tomo: `make run` sets up and starts the whole stack; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_PACKAGES := activemq default-jre-headless python3-venv
# What only the tests need: podman runs the segmentation job in a real container,
# Chromium is the browser Playwright drives (its own browser download is not used),
# Slurm and munge make the single-node cluster the slurm launcher's tests submit to,
# PostgreSQL is what `up` runs with postgres.embedded.
TEST_APT_PACKAGES := podman runc chromium slurm-wlm munge postgresql
# uv does not read pip's config: hand it pip's local wheel folder (e.g. a CPU-only torch).
export UV_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))

.PHONY: run test test-quick test-compose setup system-deps test-system-deps compose-system-deps clean-state

run: setup
	$(BIN)/mlex-tomo up

test: setup test-system-deps
	$(BIN)/python -m pytest

test-quick: setup
	$(BIN)/python -m pytest -m "not stack"

# The compose install end to end (many minutes cold): builds the images, base images
# too where no registry answers, runs `podman-compose up -d` and `mlex-tomo check`.
test-compose: setup test-system-deps compose-system-deps
	$(BIN)/python -m tests.compose.end_to_end

setup: system-deps $(BIN)/.installed

# Debian packages the embedded stack needs (ActiveMQ Classic and a Java runtime).
system-deps:
	@if [ ! -f /usr/share/activemq/bin/activemq.jar ] || ! command -v java >/dev/null \
	    || ! $(PYTHON) -c "import ensurepip, venv" 2>/dev/null; then \
	  echo "installing $(APT_PACKAGES) with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	fi

test-system-deps:
	@if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v chromium >/dev/null \
	    || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing $(TEST_APT_PACKAGES) with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(TEST_APT_PACKAGES); \
	fi

# Building base images from Debian's archive needs debootstrap; podman's networks need iptables.
compose-system-deps:
	@if ! command -v debootstrap >/dev/null || ! command -v iptables >/dev/null; then \
	  echo "installing debootstrap iptables with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq debootstrap iptables; \
	fi

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e ".[segmentation,test]"
	touch $@

# Removes catalogs, broker store, logs and generated secrets of the local stack.
clean-state:
	rm -rf data/tiled data/prefect data/activemq data/logs data/run data/secrets data/tiled_storage/writable
