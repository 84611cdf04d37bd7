"""The shared core: records and statuses, settings, addresses, errors, MIME composition, transports."""
