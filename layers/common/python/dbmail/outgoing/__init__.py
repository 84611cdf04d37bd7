"""Outgoing mail: a MessageRequest is rendered per recipient (expand), delivered (send), swept (expire)."""
