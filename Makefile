# vhostsuite: build, test, benchmark, install.
#
#   make check      everything a fresh machine needs, then the whole test suite (CI runs this)
#   make demo       boots a guest under QEMU served by our back-ends and reports what happened
#
# Packagers: make install DESTDIR=debian/tmp prefix=/usr [libexecdir=/usr/libexec]

PYTHON      ?= python3
PIP         ?= $(PYTHON) -m pip
prefix      ?= /usr/local
exec_prefix ?= $(prefix)
libexecdir  ?= $(exec_prefix)/libexec
datadir     ?= $(prefix)/share
mandir      ?= $(datadir)/man
DESTDIR     ?=
DEVICES     := gpu input rng
PYTEST_ARGS ?=

# System packages: the build (cairo headers for pycairo, a C compiler, virglrenderer's headers
# for --virgl; the EGL and OpenGL loaders libepoxy opens for it, and Mesa's EGL and software
# renderer it runs on without a GPU), the guest kit (busybox, debootstrap for a QEMU >= 8.2 on
# Debian 12, libdrm headers for the guest's test programs) and QEMU's C vhost-user-gpu that the
# benchmarks compare against.
DEB_PACKAGES := gcc pkg-config libcairo2-dev libvirglrenderer-dev libegl1 libopengl0 \
                libegl-mesa0 libgl1-mesa-dri libdrm-dev busybox-static debootstrap cpio kmod xz-utils zstd \
                qemu-system-gui

.PHONY: all deps pydeps build build-inplace debug test check bench demo install uninstall clean lint man deb qemu-reconnect fuzz fuzz-deps fuzz-build soak

all: build

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "system packages: all present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "missing system packages, install them as root: apt-get install $$missing" >&2; exit 1; fi

# The Python packages the build, the tests and lint need; pip runs only for those missing.
PYDEPS := setuptools>=74.1 Cython>=3.0 pytest>=8 pytest-benchmark>=4 hypothesis>=6 ruff evdev>=1.6 pycairo>=1.20
pydeps: deps
	@missing=$$($(PYTHON) -c 'import re, sys, importlib.metadata as m; \
	  v = lambda s: tuple(int(x) for x in re.findall(r"\d+", s)[:3]); \
	  have = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in m.distributions()}; \
	  specs = [s.partition(">=") for s in sys.argv[1:]]; \
	  print(" ".join(n + o + w for n, o, w in specs if n.lower() not in have or (w and v(have[n.lower()]) < v(w))))' \
	  $(foreach d,$(PYDEPS),'$(d)')); \
	if [ -z "$$missing" ]; then echo "python packages: all present"; \
	else echo "installing: $$missing"; $(PIP) install -q $$missing; fi

# The package goes into the interpreter's site-packages (compiled extensions included), and the
# extensions are also built in place so tests and bin/ run from the source tree.
build: pydeps build-inplace
	$(PIP) install -q --no-build-isolation --no-deps .

# For packagers (no pip, no apt-get, no network): the extensions in place, for the tests and bin/,
# and the modules byte-compiled, so that bin/ starts as an installed package does (compiling our
# sources costs each start ~40 ms, more than everything else we import; PYTHONDONTWRITEBYTECODE
# would have every start pay it).
build-inplace:
	$(PYTHON) setup.py -q build_ext --inplace
	$(PYTHON) -m compileall -q vhostsuite >/dev/null

# The extensions in place with Cython's checks on (bounds, wraparound, initialized), line
# tracing, and annotated HTML beside each .pyx (vhostsuite/core/_ring.html: yellow = Python calls).
debug: pydeps
	VHOSTSUITE_CYTHON_DEBUG=1 $(PYTHON) setup.py -q build_ext --inplace --force

# The whole suite twice: on the compiled twins, then on the pure-Python ones.
test:
	$(PYTHON) -m pytest -rs $(PYTEST_ARGS)
	VHOSTSUITE_NO_EXTENSIONS=1 $(PYTHON) -m pytest -rs -q $(PYTEST_ARGS)

check: build lint test

# ruff is not packaged in Debian: without it lint is skipped with a message, except under CI.
lint:
	@if $(PYTHON) -m ruff --version >/dev/null 2>&1; then \
	  echo "$(PYTHON) -m ruff check vhostsuite tests bench bin fuzz setup.py"; \
	  $(PYTHON) -m ruff check vhostsuite tests bench bin fuzz setup.py; \
	elif [ -n "$$CI" ]; then echo "lint: ruff is not installed (CI must lint)" >&2; exit 1; \
	else echo "lint: skipped, ruff is not installed (pip install ruff)"; fi

# The GPU bench also compares with QEMU 10's C vhost-user-gpu from the guest kit's Debian 13 tree
# (made once, cached: needs root and the network the first time; without it the bench says so).
bench: build
	@$(PYTHON) -c 'from vhostsuite.testing import guest; guest.provision_qemu()' 2>/dev/null \
	  || echo "the guest kit's QEMU 10 tree can't be made here: the GPU bench compares with QEMU 7.2 only"
	$(PYTHON) -m pytest bench --benchmark-only -s --benchmark-columns=min,median,mean,ops,rounds

demo: build
	$(PYTHON) -m vhostsuite.testing.demo --out out/demo

# The Python package (with its compiled extensions, built for $(PYTHON)) goes into a private
# directory; each launcher finds it relative to its own location, so the installed tree works
# wherever it is copied. Runtime dependencies (pycairo, python-evdev) come from the system.
libdir       ?= $(exec_prefix)/lib
pkgpythondir ?= $(libdir)/vhostsuite/python
PYTHON_ABS    = $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
REL_PKGPY     = $(shell $(PYTHON) -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' $(pkgpythondir) $(libexecdir))

# Manual pages, made from the programs' own parsers (dated by SOURCE_DATE_EPOCH, else the last
# commit, so that a rebuild gives the same bytes).
MAN_DATE ?= $(shell date -u -d @$${SOURCE_DATE_EPOCH:-$$(git -C $(CURDIR) log -1 --format=%ct 2>/dev/null || date +%s)} +%Y-%m-%d)
man:
	mkdir -p build/man
	for d in $(DEVICES); do \
	  PYTHONPATH=$(CURDIR) $(PYTHON) -m vhostsuite.program.manpage vhost-user-$$d "$(MAN_DATE)" "$(datadir)" \
	    > build/man/vhost-user-$$d.1; \
	done

# No pip and no network: setuptools builds the package (extensions included) into
# build/install-lib, which is copied into place.
install: man
	rm -rf build/install-lib
	$(PYTHON) setup.py -q build --build-lib build/install-lib --build-temp build/install-tmp
	install -d $(DESTDIR)$(pkgpythondir) $(DESTDIR)$(libexecdir) $(DESTDIR)$(datadir)/qemu/vhost-user \
	  $(DESTDIR)$(mandir)/man1
	rm -rf $(DESTDIR)$(pkgpythondir)/vhostsuite
	cp -r build/install-lib/vhostsuite $(DESTDIR)$(pkgpythondir)/
	for d in $(DEVICES); do \
	  sed -e '1s|^#!.*|#!$(PYTHON_ABS)|' \
	      -e '/^import sys$$/a import os\nsys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "$(REL_PKGPY)"))' \
	      bin/vhost-user-$$d > $(DESTDIR)$(libexecdir)/vhost-user-$$d; \
	  chmod 0755 $(DESTDIR)$(libexecdir)/vhost-user-$$d; \
	  sed 's|@libexecdir@|$(libexecdir)|' data/50-vhostsuite-$$d.json.in \
	    > $(DESTDIR)$(datadir)/qemu/vhost-user/50-vhostsuite-$$d.json; \
	  install -m 0644 build/man/vhost-user-$$d.1 $(DESTDIR)$(mandir)/man1/; \
	done

uninstall:
	for d in $(DEVICES); do \
	  rm -f $(DESTDIR)$(libexecdir)/vhost-user-$$d $(DESTDIR)$(datadir)/qemu/vhost-user/50-vhostsuite-$$d.json \
	    $(DESTDIR)$(mandir)/man1/vhost-user-$$d.1; \
	done
	rm -rf $(DESTDIR)$(pkgpythondir)
	-rmdir $(DESTDIR)$(libdir)/vhostsuite $(DESTDIR)$(datadir)/qemu/vhost-user $(DESTDIR)$(datadir)/qemu \
	  $(DESTDIR)$(mandir)/man1 $(DESTDIR)$(mandir) \
	  $(DESTDIR)$(libexecdir) $(DESTDIR)$(datadir) $(DESTDIR)$(libdir) $(DESTDIR)$(exec_prefix) $(DESTDIR)$(prefix) 2>/dev/null

# A long mixed-traffic soak on demand: RSS and fds of every back-end must stay flat.
SOAK_SECONDS ?= 600
soak: build
	$(PYTHON) bench/soak.py --seconds $(SOAK_SECONDS)

# Coverage-guided fuzzing on demand (the bounded Hypothesis fuzzing runs in `make test`): the
# extensions are built again with clang, AddressSanitizer and libFuzzer's coverage
# instrumentation into build/fuzz (a copy of the package; the normal build is untouched), and
# every fuzz/fuzz_*.py runs FUZZ_SECONDS against them with atheris' ASan+libFuzzer runtime
# preloaded, so the fuzzer steers by the C code's branches and ASan stops at a bad access.
FUZZ_SECONDS ?= 300
FUZZ_DIR      = build/fuzz
FUZZ_CFLAGS   = -fsanitize=address,fuzzer-no-link -g -O1 -fno-omit-frame-pointer
# clang and its sanitizer runtime (libclang-rt-dev: clang alone links no ASan).
fuzz-deps:
	@command -v clang >/dev/null && [ -e "$$(clang -print-file-name=libclang_rt.asan_static-x86_64.a)" ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q --no-install-recommends clang libclang-rt-dev; \
	  else echo "make fuzz needs clang and its runtime: apt-get install clang libclang-rt-dev" >&2; exit 1; fi; }
	@$(PYTHON) -c 'import atheris' 2>/dev/null || $(PIP) install -q atheris

fuzz-build: fuzz-deps pydeps
	rm -rf $(FUZZ_DIR) build/fuzz-tmp
	mkdir -p $(FUZZ_DIR)
	cp -r vhostsuite $(FUZZ_DIR)/
	find $(FUZZ_DIR) -name '*.so' -delete
	CC=clang LDSHARED="clang -shared" CFLAGS="$(FUZZ_CFLAGS)" LDFLAGS="-fsanitize=address" \
	  $(PYTHON) setup.py -q build_ext --build-lib $(FUZZ_DIR) --build-temp build/fuzz-tmp

fuzz: fuzz-build
	@runtime=$$($(PYTHON) -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so; \
	for f in fuzz/fuzz_*.py; do \
	  echo "== $$f ($(FUZZ_SECONDS)s)"; \
	  LD_PRELOAD=$$runtime ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 PYTHONPATH=$(CURDIR)/$(FUZZ_DIR) \
	    $(PYTHON) $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=build/ || exit 1; \
	done

# The Debian package as Debian builds it: dpkg-buildpackage offline in a clean, cached Debian 13
# root with only the build dependencies, then lintian; the .deb and the logs go to out/deb.
deb:
	$(PYTHON) -m vhostsuite.testing.debroot --out out/deb

# Debian 13's QEMU source package with patches/qemu/ (the vhost-user-base reconnect fix),
# x86_64 system emulator only, built in a cached Debian 13 root: for tests/e2e/test_restart_e2e.py,
# which skip until it is built. The first build takes 5-9 minutes here, so make check doesn't.
qemu-reconnect:
	$(PYTHON) -m vhostsuite.testing.qemubuild --log out/qemu-reconnect.log

clean:
	rm -rf build dist *.egg-info .pytest_cache .benchmarks
	rm -f vhostsuite/core/_ring.c vhostsuite/devices/gpu/_pixels.c vhostsuite/devices/gpu/_commands.c \
	  vhostsuite/devices/gpu/_virgl.c
	find vhostsuite -name '*.so' -delete -o -name '_*.html' -delete
