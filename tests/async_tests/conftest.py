import os

import pytest


# Flask-LongTask: LongTaskManager on the diskcache backend; "longtask-celery" on Celery.
managers = os.environ.get("DASH_TEST_MANAGERS", "longtask").split(",")


@pytest.fixture(params=managers)
def manager(request):
    return request.param


@pytest.fixture(autouse=True)
def dash_async_installed():
    # Flask-LongTask: each test returns at once without dash[async] (is_dash_async): that would
    # pass without testing anything. tests/test_dash_async.py runs these with asgiref importable.
    from tests.utils import is_dash_async

    assert is_dash_async(), "asgiref (dash[async]) is not importable: see tests/async_tests/README.md"
