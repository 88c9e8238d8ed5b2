"""Provides the dashboard widgets."""
