"""Thin click commands: parse, build a config, call the library, render."""
