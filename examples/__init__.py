"""Runnable examples (a package, so `examples.nanogpt_slw` imports by name from the repository root)."""
