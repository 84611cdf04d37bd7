"""Test doubles for services the real tests cannot reach offline."""
