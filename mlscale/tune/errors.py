"""Errors of the tune stage whose message is the whole story (the CLI prints them without a traceback)."""


class NoWinner(RuntimeError):
    """Every trial failed or reported nothing: there is no model to register."""
