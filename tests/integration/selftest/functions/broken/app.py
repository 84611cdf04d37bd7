"""Test-only handler that cannot be imported: the runner must log it and run the other functions."""

raise ImportError("probe: this handler never imports")
