"""PerroPastor's sample game: a pyglet village whose NPCs talk through perro_pastor.

Run it with `python -m sample_game` (see docs/sample_game.md). The library never imports it."""
