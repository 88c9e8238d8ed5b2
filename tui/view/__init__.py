"""Provides the view: the Textual app, its actions, commands, widgets and screens."""
