"""Shared test setup: a hermetic dataset cache for the whole session."""

import os
import tempfile

# Set at import, before any test (or Ray worker it spawns) resolves builtin:shakespeare, so
# prepared datasets go to a per-session folder, not the user's ~/.cache. Ray workers
# started from this process inherit it.
if "SLWTUNE_CACHE_DIR" not in os.environ:
    os.environ["SLWTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="slwtune-test-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
