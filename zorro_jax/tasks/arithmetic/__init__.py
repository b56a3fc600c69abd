"""Synthetic arithmetic word problems with an exact-match reward (a second built-in task)."""
