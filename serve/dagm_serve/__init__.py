"""Serving: the MMS handler, the HTTP front and the `serve` entry point of the image."""
