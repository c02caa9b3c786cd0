"""What Dash's own tests import from their ``tests/utils.py`` (plotly/dash at 27c7f7f; MIT, see
tests/async_tests/LICENSE): ``is_dash_async``, which tests/async_tests use."""


def is_dash_async() -> bool:
    """Whether dash[async] is installed (its ``asgiref``)."""
    try:
        import asgiref  # noqa: F401

        return True
    except ImportError:
        return False
