"""Inbound mail: EmailList rules and PlainRedirects route SES-received mail, rewritten and forwarded."""
