"""dbmail: the ESP Website's email system on AWS (outgoing MessageRequests, inbound lists)."""
