"""The installed distribution's version, for User-Agent, application_name and ``--version``."""

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _from_source() -> str:
    """The version pyproject.toml declares, for a source tree that was never installed (a
    request must still name the release it comes from); 0.0.0 when there is none."""
    try:
        with (Path(__file__).parent.parent / "pyproject.toml").open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0.0.0"


try:
    __version__ = version("relay")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = _from_source()
