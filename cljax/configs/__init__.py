"""The configs shipped with cljax, one published protocol per module, each with
``get_config() -> dict`` (keys documented in :mod:`cljax.experiment`).

``cljax configs`` lists them with their protocol; ``cljax run NAME`` runs one from any directory
(:func:`cljax.config.resolve_config`); copy one to start a config of your own.
"""
