"""The dialect-neutral trip of every request: parsing helpers, estimates, the pipeline."""
