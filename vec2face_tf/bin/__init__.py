"""Installed home of the train/ and export/ binaries (see setup.py)."""
