"""Quality measurement: signal metrics (metrics), speaker and transcript models (models), the A/B runner (ab)."""
