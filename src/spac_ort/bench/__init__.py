"""`spac-bench`: placement policies x fast budgets x K on the same prompts, in one process."""
