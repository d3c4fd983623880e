"""Machinery behind the public API; nothing here is imported by users."""
