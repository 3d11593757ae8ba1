"""The one exception data loading raises for a bad file."""


class DatasetError(ValueError):
    """A dataset file is missing, malformed or fails its checksum; the message names
    the file and the problem."""
