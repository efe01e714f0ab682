"""Test helpers that are not fixtures of the lab itself (e.g. a throwaway Slurm cluster)."""
