"""The package version, under the original package's names (``flashpack.version``,
``version_tuple``, ``commit_id``, and their dunder forms)."""

from ._engine import __version__

version = __version__
version_tuple = __version_tuple__ = tuple(int(p) if p.isdigit() else p for p in __version__.split("."))
commit_id = __commit_id__ = None

__all__ = ["__commit_id__", "__version__", "__version_tuple__", "commit_id", "version", "version_tuple"]
