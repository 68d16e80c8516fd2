"""The one exception type the public API raises for anything a user can get wrong."""


class FlowerDemoError(ValueError):
    """A bad image, path, model, label map or argument; the message is one readable line."""
