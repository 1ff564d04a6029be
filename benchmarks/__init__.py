"""Speed and accuracy comparisons that print tables (run as scripts; not timed tests)."""
