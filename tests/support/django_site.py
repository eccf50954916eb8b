"""A small Django site for tests/system/test_django_middleware.py, run in a process of its own
(Django's settings are once per process): ``python tests/support/django_site.py DSN``. It
migrates Django's auth tables,
makes requests with Django's test client through relay's middleware, and prints one JSON
object of what the requests answered and what the connection holds afterwards."""

from __future__ import annotations

import json
import sys

import django
import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse
from django.urls import path


def write(request: HttpRequest) -> HttpResponse:
    """Two statements in autocommit: two transactions, one request."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO items (note) VALUES (%s)", [request.path + " first"])
        cursor.execute("INSERT INTO items (note) VALUES (%s)", [request.path + " second"])
    return HttpResponse("ok")


def rolled_back_then_write(request: HttpRequest) -> HttpResponse:
    """The request's first query runs in a transaction that rolls back (taking a setting made
    in it along); the write after it must still be tagged."""
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            raise RuntimeError("give up")
    except RuntimeError:
        pass
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint
                with connection.cursor() as cursor:
                    cursor.execute("INSERT INTO items (note) VALUES ('undone')")
                raise RuntimeError("roll the savepoint back")
        except RuntimeError:
            pass
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO items (note) VALUES ('after rollbacks')")
    return HttpResponse("ok")


def reconnect_then_write(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()  # a new database session: the tag must be set on it too
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO items (note) VALUES ('after a reconnect')")
    return HttpResponse("ok")


def manual_transaction(request: HttpRequest) -> HttpResponse:
    """Django's older API: a transaction it does not follow through atomic()."""
    transaction.set_autocommit(False)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        transaction.rollback()
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO items (note) VALUES ('after a manual rollback')")
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    return HttpResponse("ok")


def no_database(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [
    path("write", write),
    path("rollbacks", rolled_back_then_write),
    path("reconnect", reconnect_then_write),
    path("manual", manual_transaction),
    path("nothing", no_database),
]


def main(dsn: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "relay.contrib.django.RelayContextMiddleware",
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": params["dbname"],
                "USER": params.get("user", ""),
                "HOST": params.get("host", ""),
                "PORT": params.get("port", ""),
                "CONN_MAX_AGE": None,  # one connection for every request: no tag may leak
            }
        },
        USE_TZ=True,
    )
    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    alice = User.objects.create_user("alice")
    client = Client()
    answers = {}
    client.force_login(alice)
    answers["given id"] = client.get("/write", HTTP_X_REQUEST_ID="req-from-proxy")
    answers["made id"] = client.get("/write")
    answers["hostile id"] = client.get("/write", HTTP_X_REQUEST_ID="bad id; with spaces")
    answers["rollbacks"] = client.get("/rollbacks")
    answers["reconnect"] = client.get("/reconnect")
    answers["manual"] = client.get("/manual")
    answers["nothing"] = client.get("/nothing")
    client.logout()
    answers["anonymous"] = client.get("/write")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('relay.username', true), "
            "current_setting('relay.request_id', true)"
        )
        left = cursor.fetchone()
    print(
        json.dumps(
            {
                "status": {name: answer.status_code for name, answer in answers.items()},
                "request_ids": {name: answer["X-Request-ID"] for name, answer in answers.items()},
                "left_on_the_connection": left,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
