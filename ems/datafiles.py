"""Where the package's own data files are (``ems/data/``: factor sets, gases, grid mixes, maps ...)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["data_path"]


def data_path(*parts: str) -> Path:
    """The path of a file or folder under the installed package's ``ems/data/``.

    Parameters
    ----------
    *parts : str
        Path components below ``data``, e.g. ``data_path("factors", "cn-2023.yaml")``.
    """
    return Path(str(resources.files("ems").joinpath("data", *parts)))
