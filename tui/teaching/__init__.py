"""Provides the teaching layer: comparisons of modes and exports of a session."""
