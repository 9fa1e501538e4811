"""Monitoring: drift and decay of live traffic against the training profile, and the retraining trigger."""
