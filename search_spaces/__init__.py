"""The shipped search spaces (*.yaml). A package only so that the wheel carries them: pyproject.toml maps
this folder to `scalesearch.search_spaces`, and `scalesearch.config.spaces` finds them with importlib.resources."""
