"""Compute as pure jobs: the device policy, the models of this process, the jobs, and where they run."""
