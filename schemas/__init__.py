"""Wire contract of the scheduler: subjects, streams, request bodies and events."""
