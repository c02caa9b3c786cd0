import os

import pytest


# Flask-LongTask: LongTaskManager on the diskcache backend; "longtask-celery" on Celery.
managers = os.environ.get("DASH_TEST_MANAGERS", "longtask").split(",")


@pytest.fixture(params=managers)
def manager(request):
    return request.param
