# husk — see README.md. Every target does its own set-up (`setup` is idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT  := $(CURDIR)
TOOLS := $(ROOT)/.tools
CARGO ?= cargo

# Debian packages the project needs (build, lab, system tests, images).
APT_PACKAGES := qemu-system-x86 containerd runc busybox-static cpio umoci erofs-utils \
	libseccomp-dev libcap-ng-dev pkg-config kmod xz-utils zstd iproute2 e2fsprogs procps socat lz4 \
	docker-registry skopeo containernetworking-plugins iptables protobuf-compiler
# Tools from crates.io, installed into $(TOOLS) (not ~/.cargo): name@version.
VIRTIOFSD_VERSION := 1.14.0

.PHONY: help setup setup-apt setup-tools build install test lint unit-test lab-shell bench conformance soak fuzz demo clean guest-image

help:
	@echo "make demo       run a container in a microVM (through the lab where the host has no hardware KVM)"
	@echo "make test       set up, then fmt check, clippy, unit, integration and system tests"
	@echo "make setup      install the Debian packages and tools the project needs (idempotent)"
	@echo "make build      build the workspace"
	@echo "make install    husk, husk-vmm, containerd-shim-husk-v2 and virtiofsd to $(PREFIX)/bin, the guest image to $(GUEST_INSTALL)"
	@echo "make guest-image  the guest kernel and initramfs (static husk-agent as /init) in build/guest"
	@echo "make lab-shell  an interactive shell inside the lab (a Linux with hardware-style KVM)"
	@echo "make bench      benchmarks in the lab: boot time, memory, virtio-net/fs I/O against QEMU, husk run against runc"
	@echo "make conformance  real programs' own test suites (CPython's) inside husk and under runc, in the lab (long)"
	@echo "make soak       SOAK_KEEP VMs (20) kept alive while SOAK_CYCLES (200) more start and stop, in the lab; fails on any leak (long)"
	@echo "make fuzz       coverage-guided fuzzing (cargo-fuzz, nightly), FUZZ_SECONDS per target (default 60)"
	@echo "make clean      remove build outputs (keeps the downloaded kernel in build/cache)"

setup: setup-apt setup-tools

# Installs only what is missing; `apt-get update` only when something is.
setup-apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:" $$missing; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	else echo "setup: Debian packages present"; fi

setup-tools: $(TOOLS)/bin/virtiofsd

$(TOOLS)/bin/virtiofsd:
	@echo "setup: building virtiofsd $(VIRTIOFSD_VERSION) into $(TOOLS) (once, a few minutes)"
	$(CARGO) install --quiet --locked --root $(TOOLS) virtiofsd@$(VIRTIOFSD_VERSION)

build:
	$(CARGO) build --workspace

# containerd finds the shim on its PATH as containerd-shim-husk-v2 (runtime_type
# io.containerd.husk.v2, docs/containerd.md); husk and the shim find husk-vmm and
# virtiofsd next to themselves, the guest image in <state_dir>/guest.
PREFIX ?= /usr/local
GUEST_INSTALL ?= /var/lib/husk/guest
install: setup-tools guest-image
	$(CARGO) build --release -p husk-shim -p husk-vmm
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(GUEST_INSTALL)
	install -m 0755 target/release/husk target/release/husk-vmm \
		target/release/containerd-shim-husk-v2 $(TOOLS)/bin/virtiofsd $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 $(GUEST)/vmlinuz $(GUEST)/initramfs.img $(DESTDIR)$(GUEST_INSTALL)/

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# System tests fail (instead of skipping) when the lab cannot run: `make test` has set
# up everything the lab needs.
unit-test:
	HUSK_REQUIRE_LAB=1 $(CARGO) test --workspace

test: setup lint guest-image unit-test

lab-shell: setup
	tests/lab/run --interactive --timeout 0 -- bash -l

# BENCH_RUNS=N for more runs (default 5); BENCH_JOB_MIB / BENCH_JOB_RUNS size the CI-shaped
# network job (default 64 MiB, BENCH_RUNS runs). Results in build/bench/.
bench: setup guest-image
	tests/bench/run

# Not in `make test` (tens of minutes): see docs/conformance.md.
conformance: setup guest-image
	tests/conformance/run

# Not in `make test` (hours in the emulated lab): see docs/testing.md, "Soak".
soak: setup guest-image
	tests/soak/run

# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly; see docs/testing.md): each
# target for FUZZ_SECONDS. New inputs go to fuzz/target/corpus/<target>; the committed
# corpus (fuzz/corpus/<target>) is read, never written. Crashes land in fuzz/artifacts/.
# `make test` replays fuzz/corpus/ on stable (the fuzz_corpus tests).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := virtio_block virtio_net vsock_packet virtio_rng virtio_balloon virtio_mmio \
	virtio_fs agent_spec image_index
fuzz: $(TOOLS)/bin/cargo-fuzz
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/target/corpus/$$t && echo "fuzz: $$t for $(FUZZ_SECONDS) s" && \
		PATH="$(TOOLS)/bin:$$PATH" $(CARGO) +nightly fuzz run --debug-assertions $$t \
			fuzz/target/corpus/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 || exit 1; \
	done

$(TOOLS)/bin/cargo-fuzz:
	$(CARGO) install --quiet --locked --root $(TOOLS) cargo-fuzz

# The guest image: rebuilt when the agent, its protocol or the scripts change.
GUEST := build/guest
GUEST_INPUTS := $(shell find agent -name '*.rs' -o -name '*.proto' -o -name Cargo.toml 2>/dev/null) \
	Cargo.lock guest-image/build guest-image/build-agent guest-image/debian-kernel
guest-image: setup-apt $(GUEST)/initramfs.img

$(GUEST)/initramfs.img: $(GUEST_INPUTS)
	guest-image/build --out $(GUEST)

# The main job: a container in a microVM (see tests/demo).
demo:
	tests/demo

clean:
	$(CARGO) clean
	rm -rf fuzz/target
	rm -rf build/tmp build/lab.lock
