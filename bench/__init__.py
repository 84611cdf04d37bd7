"""`make bench`: per-request costs of dbmail, measured (never asserted in tests)."""
