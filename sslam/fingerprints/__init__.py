"""Which package code a job executed, and whether it changed since: the fingerprints that decide re-runs
(docs/fingerprints.md). Knows Python code, not SSLAM."""
