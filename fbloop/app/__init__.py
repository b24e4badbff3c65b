"""The annotation app's view models (:mod:`.views`): what ``app.py`` draws, computed from the store."""
