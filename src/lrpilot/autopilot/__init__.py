"""The autopilot (work in progress): decisions in :mod:`lrpilot.autopilot.decide`."""
