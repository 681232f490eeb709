"""Judging the answer path and watching it in production: the offline evaluation harness, the
SLO gate a change must pass, the human review loop, and drift and cost reports."""
