"""Judges as plugins (registry.py), the win-matrix math, and running a judge over prompt groups."""
