"""The package version, under the original package's names (``flashpack.version``,
``version_tuple``, ``commit_id``, and their dunder forms)."""

from ._core import __version__

version = __version__
version_tuple = __version_tuple__ = tuple(int(p) if p.isdigit() else p for p in __version__.split("."))
commit_id = __commit_id__ = None

__all__ = ["__version__", "__version_tuple__", "version", "version_tuple", "__commit_id__", "commit_id"]
