"""Placeholder replaced by the schedules work (see issue 2)."""
