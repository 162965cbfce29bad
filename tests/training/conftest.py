"""The shared fixtures (``trained``, ``deployable``) live in tests/conftest.py."""
