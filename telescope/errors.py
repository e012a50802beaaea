"""One error type for bad input, so the CLI can print one line and exit 2 without a traceback."""


class ConfigError(ValueError):
    """Bad user input: names the offending field and says how to fix it.

    `str(err)` is the one line the CLI prints, e.g.
    "width: must be a multiple of head_dim (32); got 48 — pick 32, 64, 96, ...".
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
