"""The job domain: the database, the job core (every job state change), the broker, settings, keys and
limits. What the workers import; nothing here knows about HTTP."""
