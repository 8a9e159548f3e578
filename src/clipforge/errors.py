"""One exception type for user mistakes, so the CLI can print one clear line instead of a traceback."""


class ClipforgeError(Exception):
    """A problem the user can fix: a bad config field, a missing file, an unknown tower id."""


class ConfigError(ClipforgeError):
    """A config field is unknown, has the wrong type, or an impossible value. The message names the field."""


class CheckpointError(ClipforgeError):
    """A training checkpoint cannot be used: truncated, not a clipforge checkpoint, or from a different config."""
