"""End-to-end experiments: every training stage, then the evaluation, from one command."""
