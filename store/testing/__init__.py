"""Test support shipped with the store: synthetic corpora (synthetic.py)."""
