"""The isolated side's trust decisions and safe unpacking."""
