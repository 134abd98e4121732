"""Several serving processes behaving as one server (`ferry serve --workers N`)."""
