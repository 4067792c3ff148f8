"""Speed benchmarks of the online (batch-1) loop: ``make bench``."""
