"""What every stage may use: atomic files, locks, redaction of credentials, sizes for people."""
