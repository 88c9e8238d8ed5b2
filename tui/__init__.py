"""dispatch-lab: the Textual dashboard."""
