"""Provider feedback: SES and SendGrid events, DSNs and unsubscribes recorded on their emails,
and the suppression list they feed (docs/schema.md)."""
