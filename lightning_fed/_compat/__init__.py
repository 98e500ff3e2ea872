"""Compatibility shims: the only package that names private (underscore) APIs of other libraries."""
