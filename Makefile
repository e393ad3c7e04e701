# pokelab: `make demo` and `make test` set everything up on a fresh Debian 12 or 13 machine (as root).
# Everything downloaded or built is cached under $(POKELAB_CACHE) (default ~/.cache/pokelab).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export POKELAB_CACHE ?= $(HOME)/.cache/pokelab

APT_PACKAGES := qemu-system-x86 gdb busybox-static dropbear-bin cpio kmod xz-utils zstd \
                python3-venv binutils iproute2 procps ca-certificates gcc libc6-dev lz4 make \
                debootstrap bubblewrap debian-archive-keyring
# what `pokelab qemu` needs to build QEMU 10.2 when the host's gdbstub flushes translated code at
# every debug stop (Debian 12's 7.2, Debian 13's 10.0); the build uses the host's BIOS and ROMs
QEMU_BUILD_PACKAGES := ninja-build pkg-config device-tree-compiler libglib2.0-dev libpixman-1-dev \
                       libslirp-dev libfdt-dev seabios qemu-system-data
# what a kernel build needs (pokelab build-kernel, bisect; make bench, e2e-patched, e2e-bisect)
E2E_PACKAGES := ccache flex bison libelf-dev dwarves bc patch

.PHONY: all setup apt kbuild-deps venv qemu images demo demo-kernel demo-deps test unit host vm lint types bench clean help

help:
	@echo "make demo   - boot the default kernel, run a guest command over SSH, then probe it"
	@echo "make test   - the whole suite: lint, types, unit tests, host tests, VM tests"
	@echo "make bench  - benchmarks, written to bench/latest.json"

setup: apt venv

# Install Debian packages, only those missing (idempotent, no root needed when all are present).
define apt-install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  [ "$$(id -u)" = 0 ] || { echo "make: need root to install: $$missing" >&2; exit 2; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

apt:
	$(call apt-install,$(APT_PACKAGES))

# what `pokelab build-kernel` and `pokelab bisect --source` need beyond `make setup`
kbuild-deps:
	$(call apt-install,$(E2E_PACKAGES))

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# the kernels the test suite boots, as catalog ids resolved against pokelab's own apt sources
# (6.1-oldest: the good end of the --debian bisect test; 7.3: the 6.16+ probe tests;
# 7.3-amd64/7.3-rt-amd64: the flavours tests; pokelab images --kernel all fetches every catalog entry)
TEST_KERNELS := 6.1 6.12 6.1-oldest 7.3 7.3-amd64 7.3-rt-amd64

# a QEMU without the per-stop translation-cache flush: the host's if it has none, else a build of
# QEMU 10.2 into the cache, once (~5 min on 2 cores; pokelab qemu prints which one VM commands use)
qemu: setup
	$(call apt-install,$(QEMU_BUILD_PACKAGES))
	$(BIN)/pokelab qemu

images: setup qemu
	$(BIN)/pokelab images $(addprefix --kernel ,$(TEST_KERNELS))

# the default kernel and its initramfs (what `make demo` boots)
demo-kernel: setup
	$(BIN)/pokelab images

# On a fresh machine the QEMU build (minutes of CPU) and the default kernel's download (minutes
# of network and unpacking) run side by side: a cold `make demo` waits for the longer one only.
# Each is cached and locked on its own, so a warm run does nothing here.
demo-deps: setup
	$(MAKE) --no-print-directory -j2 qemu demo-kernel

# A guest command over SSH, then the main job: the probe on the default kernel.
demo: demo-deps
	$(BIN)/pokelab run-cmd -- 'uname -a; echo "online vCPUs: $$(cat /sys/devices/system/cpu/online)"; cat /proc/cmdline'
	$(BIN)/pokelab repro ftrace-function

lint: venv
	$(BIN)/ruff check orchestrator tests scenarios
	$(BIN)/lint-imports

types: venv
	$(BIN)/mypy orchestrator

unit: venv
	$(BIN)/pytest -q tests/unit

# what needs this host's cache (the kernels `images` fetched) but boots nothing
host: setup images
	$(BIN)/pytest -q -m host tests/host

vm: setup images
	$(BIN)/pytest -q -m vm --durations=15 tests/vm scenarios

test: setup images lint types unit host vm

# the kbuild part builds linux-source-6.1 from nothing (an empty ccache): ~10-15 min on 2 cores
bench: setup images
	$(call apt-install,$(E2E_PACKAGES))
	$(BIN)/pokelab bench --out bench/latest.json

clean:
	rm -rf $(VENV) artifacts .pytest_cache .mypy_cache .ruff_cache

# End to end, slow (a cold kernel build is minutes; not part of `make test`): build Debian's
# linux-source-6.1 with and without images/patches/0001-*.patch (pokelab build-kernel) and
# check the probe's verdicts: FAIL with violations on the patched kernel, PASS on the other;
# the same for the newest linux-source-7.x of pokelab's own apt sources and 0002-*.patch
# (scenario single-poke-in-batch).  POKELAB_KERNEL_SOURCE=DIR / POKELAB_KERNEL_SOURCE_7X=DIR
# use other trees.
.PHONY: e2e-patched

e2e-patched: setup
	$(call apt-install,$(E2E_PACKAGES))
	$(BIN)/pytest -q -s -m slow -p no:cacheprovider tests/e2e/test_patched_kernel.py

# slow, not part of `make test`: a 4-commit git history of linux-source-6.1, one commit the bug
# patch, bisected with `pokelab bisect --runs 2` (kernel builds per step; ccache helps)
.PHONY: e2e-bisect
e2e-bisect: setup
	$(call apt-install,$(E2E_PACKAGES))
	$(BIN)/pytest -q -s -m slow -p no:cacheprovider tests/e2e/test_bisect.py
