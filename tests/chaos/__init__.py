"""Long fault scenarios run by ``make chaos`` (not by ``make test``)."""
