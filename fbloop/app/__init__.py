"""The annotation app's parts apart from its page: the form's questions and checks (:mod:`.form`), the
view models (:mod:`.views`: what ``app.py`` draws, computed from the store) and the dashboard's charts
(:mod:`.charts`)."""
