"""The drift tests' tiny classifier with a reference (shared with the unit tests)."""

from tests.unit.monitoring.conftest import classifier

__all__ = ["classifier"]
