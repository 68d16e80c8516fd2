"""The one exception type the public API raises for anything a user can get wrong."""


class FlowerDemoError(ValueError):
    """A bad image, path, model, label map or argument; the message is one readable line."""


def first_line(exc: BaseException) -> str:
    """A library exception as one readable line (its first line, or its type if it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
