"""Real local services for tests, demos and benchmarks (an OpenSSH SFTP server on loopback)."""
