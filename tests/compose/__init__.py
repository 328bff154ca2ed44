"""Helpers for running the compose install where no container registry can be reached."""
