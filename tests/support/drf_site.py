"""A small Django REST Framework application for tests/system/test_drf_middleware.py and
tests/system/test_netbox_dialect.py, NetBox-shaped, run in a process of its own (Django's
settings are once per process): ``python tests/support/drf_site.py DSN SCENARIO``.

Sites (with a status), devices (a foreign key to their site, a status stored as text, tags
through a many-to-many table) and tags, served by ModelViewSets with token and session
authentication; a device's creation writes its row twice in one transaction, as NetBox's
follow-up writes do. A middleware gives each request its own id as NetBox's CoreMiddleware does
(``request.id``, a UUID, returned in ``X-Request-ID``). The tables are tracked by relay; the
site makes requests with Django's test client and prints one JSON object of what they answered
and each request's method and path."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

import django
import psycopg
from django.apps import AppConfig
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path, re_path

urlpatterns: list[Any] = []
"""Filled by ``build()`` once Django is set up: the views need the models, which need it."""

SETTINGS = ("username", "request_id", "request_path", "request_method")


class Dcim(AppConfig):
    """The models' application (this module): their reverse relations need it installed."""

    name = __name__
    label = "dcim"
    default_auto_field = "django.db.models.BigAutoField"


class Undo(Exception):
    """Rolls a transaction or savepoint back on purpose."""


def app_request_id(get_response: Callable[[HttpRequest], HttpResponse]) -> Any:
    """NetBox's CoreMiddleware's request id: ``request.id = uuid.uuid4()``, and the response's
    ``X-Request-ID``. ``X-Test-Id`` makes it a hostile one instead, or leaves it out
    (``absent``); relay sends the header then."""

    def middleware(request: HttpRequest) -> HttpResponse:
        kind = request.headers.get("X-Test-Id", "uuid")
        hostile: dict[str, Any] = {
            "int": 42,
            "none": None,
            "nul": "id\x00with-a-nul",
            "huge": "x" * 10_000,
            "spaces": "an id; with spaces",
        }
        if kind == "uuid":
            request.id = uuid.uuid4()
        elif kind in hostile:
            request.id = hostile[kind]
        response = get_response(request)
        if kind == "uuid":
            response["X-Request-ID"] = request.id
        return response

    return middleware


def session_settings() -> dict[str, str]:
    with connection.cursor() as cursor:
        calls = ", ".join(f"current_setting('relay.{name}', true)" for name in SETTINGS)
        cursor.execute(f"SELECT {calls}")
        row = cursor.fetchone()
    return dict(zip(SETTINGS, row, strict=True))


def add_site(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO dcim_site (name, slug, status) VALUES (%s, %s, %s)", [name, name, "active"]
        )


def settings_view(request: HttpRequest) -> HttpResponse:
    """What a change written now would be tagged with (any path: /echo/...), asked twice."""
    session_settings()
    return JsonResponse(session_settings())


def switch_users(request: HttpRequest) -> HttpResponse:
    """Logs in and out mid-request, in nested transactions, writing after each."""
    from django.contrib.auth import login, logout
    from django.contrib.auth.models import User

    carol = User.objects.get(username="carol")
    add_site("anonymous")
    with transaction.atomic():
        add_site("before login")
        with transaction.atomic():
            login(request, carol)
            add_site("after login")
        try:
            with transaction.atomic():  # the session's tag goes back to carol with it
                logout(request)
                add_site("after logout, undone")
                raise Undo
        except Undo:
            pass
        add_site("after the undone logout")
    login(request, carol)
    add_site("logged in again")
    logout(request)
    add_site("logged out")
    return HttpResponse("ok")


def late_request_id(request: HttpRequest) -> HttpResponse:
    """The application's id appears after the request's first write."""
    add_site("before the id")
    request.id = "late-id"
    add_site("after the id")
    return HttpResponse("ok")


class Odd:
    """A user from a custom backend whose name PostgreSQL cannot store as given."""

    is_authenticated = True

    def __init__(self, name: str) -> None:
        self.name = name

    def get_username(self) -> str:
        return self.name


def odd_users(request: HttpRequest) -> HttpResponse:
    request.user = Odd("ev\x00e")
    add_site("a NUL in the name")
    request.user = Odd("")
    add_site("an empty name")
    return HttpResponse("ok")


def write_then_fail(request: HttpRequest) -> HttpResponse:
    add_site("kept")
    with transaction.atomic():
        add_site("undone by the error")
        raise RuntimeError("the view fails after writing")


def build() -> None:
    """The models, serializers, views and URLs (after django.setup())."""
    from django.db import models
    from rest_framework import routers, serializers, viewsets
    from rest_framework.decorators import api_view
    from rest_framework.request import Request
    from rest_framework.response import Response

    class Site(models.Model):
        name = models.CharField(max_length=100, unique=True)
        slug = models.SlugField(max_length=100, unique=True)
        status = models.CharField(
            max_length=50,
            choices=[("active", "Active"), ("planned", "Planned"), ("retired", "Retired")],
            default="active",
        )

        class Meta:
            app_label = "dcim"

    class Tag(models.Model):
        name = models.CharField(max_length=100, unique=True)

        class Meta:
            app_label = "dcim"

    class Device(models.Model):
        name = models.CharField(max_length=100)
        site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="devices")
        status = models.CharField(
            max_length=50,
            choices=[("active", "Active"), ("planned", "Planned"), ("offline", "Offline")],
            default="active",
        )
        serial = models.CharField(max_length=50, blank=True)
        tags = models.ManyToManyField(Tag, blank=True)

        class Meta:
            app_label = "dcim"

    class SiteSerializer(serializers.ModelSerializer):
        class Meta:
            model = Site
            fields = ("id", "name", "slug", "status")

    class TagSerializer(serializers.ModelSerializer):
        class Meta:
            model = Tag
            fields = ("id", "name")

    class DeviceSerializer(serializers.ModelSerializer):
        class Meta:
            model = Device
            fields = ("id", "name", "site", "status", "serial", "tags")

    class SiteViewSet(viewsets.ModelViewSet):
        queryset = Site.objects.all()
        serializer_class = SiteSerializer

    class TagViewSet(viewsets.ModelViewSet):
        queryset = Tag.objects.all()
        serializer_class = TagSerializer

    class DeviceViewSet(viewsets.ModelViewSet):
        queryset = Device.objects.all()
        serializer_class = DeviceSerializer

        def perform_create(self, serializer: Any) -> None:
            """Saves, then saves again with a field derived from the new id."""
            with transaction.atomic():
                device = serializer.save()
                device.serial = f"SN-{device.pk:06d}"
                device.save()

        def perform_update(self, serializer: Any) -> None:
            """In one transaction, as NetBox's: the row's UPDATE and its tags' rows."""
            with transaction.atomic():
                serializer.save()

    @api_view(["GET", "POST", "PATCH"])
    def api_settings(request: Request) -> Response:
        return Response(session_settings())

    @api_view(["POST"])
    def api_write_then_fail(request: Request) -> Response:
        with transaction.atomic():
            Site.objects.create(name="doomed", slug="doomed")
            raise RuntimeError("the view fails after writing")

    router = routers.DefaultRouter()
    router.register("sites", SiteViewSet)
    router.register("tags", TagViewSet)
    router.register("devices", DeviceViewSet)
    urlpatterns.extend(
        [
            path("api/settings/", api_settings),
            path("api/fail/", api_write_then_fail),
            path("api/", include(router.urls)),
            path("switch", switch_users),
            path("late", late_request_id),
            path("odd", odd_users),
            path("fail", write_then_fail),
            re_path(r"^echo/", settings_view),
        ]
    )
    with connection.schema_editor() as editor:
        for model in (Site, Tag, Device):
            editor.create_model(model)  # and Device's many-to-many table


class Asker:
    """Django's test client, keeping every answer by name."""

    def __init__(self) -> None:
        from django.test import Client

        self.client = Client(raise_request_exception=False)
        self.answers: dict[str, Any] = {}
        self.bodies: dict[str, Any] = {}
        self.sent: dict[str, tuple[str, str]] = {}
        self.errors: dict[str, str] = {}

    def __call__(self, name: str, method: str, url: str, data: Any = None, **extra: Any) -> Any:
        send = getattr(self.client, method)
        if data is None:
            answer = send(url, **extra)
        else:
            answer = send(url, data=json.dumps(data), content_type="application/json", **extra)
        self.answers[name] = answer
        self.sent[name] = (method.upper(), url)
        if answer.get("Content-Type", "").startswith("application/json"):
            self.bodies[name] = answer.json()
        return answer

    def fresh(self, name: str, method: str, url: str, **extra: Any) -> None:
        """One request through a new handler, which builds the middleware from the settings
        of the moment, kept with the others."""
        other = Asker()
        try:
            other(name, method, url, **extra)
        finally:
            self.answers.update(other.answers)
            self.bodies.update(other.bodies)
            self.sent.update(other.sent)


BY_TOKEN = {"HTTP_AUTHORIZATION": "Token " + "a" * 40}


def api(ask: Asker) -> None:
    """Token and session authentication through ModelViewSets."""
    site = ask("token site", "post", "/api/sites/", {"name": "ams1", "slug": "ams1"}, **BY_TOKEN)
    tags = [
        ask(f"token tag {n}", "post", "/api/tags/", {"name": n}, **BY_TOKEN).json()["id"]
        for n in ("core", "edge")
    ]
    device = ask(
        "token device",
        "post",
        "/api/devices/",
        {"name": "sw1", "site": site.json()["id"], "status": "planned", "tags": tags},
        **BY_TOKEN,
        HTTP_X_REQUEST_ID="client-id",  # the application's own id wins
    ).json()
    ask("token patch", "patch", f"/api/devices/{device['id']}/", {"status": "active"}, **BY_TOKEN)
    ask("token settings", "post", "/api/settings/", {}, **BY_TOKEN)
    bad = {"HTTP_AUTHORIZATION": "Token " + "b" * 40}
    ask("bad token", "post", "/api/sites/", {"name": "x", "slug": "x"}, **bad)
    ask("api fails", "post", "/api/fail/", {}, **BY_TOKEN)
    ask("anonymous after", "get", "/echo/anonymous")
    from django.contrib.auth.models import User

    ask.client.force_login(User.objects.get(username="bob"))
    ask("session site", "post", "/api/sites/", {"name": "fra1", "slug": "fra1"})
    ask("session settings", "patch", "/api/settings/", {})
    ask.client.logout()
    connection.settings_dict["ATOMIC_REQUESTS"] = True  # each view in one transaction
    try:
        ask("atomic patch", "patch", f"/api/devices/{device['id']}/", {"name": "sw2"}, **BY_TOKEN)
        ask("atomic fails", "post", "/api/fail/", {}, **BY_TOKEN)
    finally:
        connection.settings_dict["ATOMIC_REQUESTS"] = False
    ask("anonymous at the end", "get", "/echo/end")


def users(ask: Asker) -> None:
    """Users that change during a request, odd users, a view that fails after writing."""
    from django.contrib.auth.models import User

    ask("switch", "post", "/switch")
    ask("odd users", "post", "/odd")
    ask.client.force_login(User.objects.get(username="bob"))
    ask("fails", "post", "/fail")
    ask.client.logout()
    ask("anonymous at the end", "post", "/echo/end")


def trace_id(request: HttpRequest) -> str:
    """An application's request id kept elsewhere than a request attribute, made anew at
    each call (a hostile one when the path says so)."""
    where: str = request.path
    if where == "/echo/hostile":
        return "".join(["a hostile", " id"])
    return "trace-" + where.strip("/").replace("/", "-")


def ids(ask: Asker) -> None:
    """Request ids: hostile ones from the application, one that comes late, the setting."""
    from django.test import override_settings

    for kind in ("int", "none", "nul", "huge", "spaces"):
        ask(f"id {kind}", "get", "/echo/", HTTP_X_TEST_ID=kind)
    ask("id late", "post", "/late", HTTP_X_TEST_ID="absent")
    ask("nul path", "get", "/echo/a%00b")
    before = [*settings.MIDDLEWARE[:2], settings.MIDDLEWARE[3], settings.MIDDLEWARE[2]]
    with override_settings(MIDDLEWARE=before):  # relay's before the one that sets request.id
        ask.fresh("relay first", "post", "/echo/first")
    chosen = {"function": f"{__name__}.trace_id", "none": None, "bad": 5, "nowhere": "no.where"}
    for name, value in chosen.items():
        with override_settings(RELAY_REQUEST_ID=value):
            try:
                headers = {"HTTP_X_TEST_ID": "absent", "HTTP_X_REQUEST_ID": "client-7"}
                ask.fresh(f"setting {name}", "get", "/echo/x", **headers)
                if name == "function":
                    ask.fresh("function hostile", "post", "/echo/hostile", **headers)
            except Exception as error:
                ask.errors[name] = f"{type(error).__name__}: {error}"


def netbox(ask: Asker) -> None:
    """What a NetBox user does through the REST API with a token: two sites, a tag, a device
    with the tag (created and saved again in one transaction, as NetBox's follow-up writes),
    its status changed twice, its name once, its tags taken off, and its deletion. Each request
    writes in one transaction, as NetBox's do (NetBoxModelViewSet.perform_create, perform_update
    and perform_destroy each wrap their write in transaction.atomic): the device's creation and
    a PATCH in the view's atomic block, a deletion (and its tags' rows) in Django's atomic
    delete."""
    site = ask(
        "site ams1",
        "post",
        "/api/sites/",
        {"name": "AMS1", "slug": "ams1", "status": "active"},
        **BY_TOKEN,
    ).json()
    ask(
        "site lab",
        "post",
        "/api/sites/",
        {"name": "Lab", "slug": "lab", "status": "retired"},
        **BY_TOKEN,
    )
    tag = ask("tag core", "post", "/api/tags/", {"name": "core"}, **BY_TOKEN).json()
    device = ask(
        "device created",
        "post",
        "/api/devices/",
        {"name": "sw1", "site": site["id"], "status": "planned", "tags": [tag["id"]]},
        **BY_TOKEN,
    ).json()
    url = f"/api/devices/{device['id']}/"
    ask("device active", "patch", url, {"status": "active"}, **BY_TOKEN)
    ask("device renamed", "patch", url, {"name": "ams1-sw1"}, **BY_TOKEN)
    ask("device untagged", "patch", url, {"tags": []}, **BY_TOKEN)
    ask("device offline", "patch", url, {"status": "offline"}, **BY_TOKEN)
    ask("device deleted", "delete", url, **BY_TOKEN)


SCENARIOS = {"api": api, "users": users, "ids": ids, "netbox": netbox}


def configure(dsn: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "rest_framework",
            "rest_framework.authtoken",
            f"{__name__}.Dcim",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            f"{__name__}.app_request_id",
            "relay.contrib.django.RelayContextMiddleware",
        ],
        # Sessions in the database, as NetBox keeps them: reading request.user queries, inside
        # relay's wrapper at a request's first query.
        SESSION_ENGINE="django.contrib.sessions.backends.db",
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [
                "rest_framework.authentication.SessionAuthentication",
                "rest_framework.authentication.TokenAuthentication",
            ],
            "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
        },
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
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()


def main(dsn: str, scenario: str) -> None:
    configure(dsn)
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("migrate", verbosity=0)
    build()
    with connection.cursor() as cursor:
        for table in ("dcim_site", "dcim_tag", "dcim_device", "dcim_device_tags"):
            cursor.execute("SELECT relay.track(%s)", [table])
    alice = User.objects.create_user("alice")
    User.objects.create_user("bob")
    User.objects.create_user("carol")
    Token.objects.create(user=alice, key="a" * 40)
    asker = Asker()
    SCENARIOS[scenario](asker)
    print(
        json.dumps(
            {
                "status": {name: answer.status_code for name, answer in asker.answers.items()},
                "request_ids": {
                    name: answer.get("X-Request-ID") for name, answer in asker.answers.items()
                },
                "bodies": asker.bodies,
                "sent": asker.sent,
                "errors": asker.errors,
                "left_on_the_connection": session_settings(),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
