"""URL patterns of the Django app that tests/test_frameworks.py runs in-process."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def article(request: HttpRequest, year: int) -> HttpResponse:
    return HttpResponse(f"articles of {year}")


async def async_article(request: HttpRequest, year: int) -> HttpResponse:
    return HttpResponse(f"async articles of {year}")


def post(request: HttpRequest, slug: str) -> HttpResponse:
    return HttpResponse(f"post {slug}")


blog = [path("posts/<slug:slug>/", post)]

urlpatterns = [
    path("articles/<int:year>/", article),
    path("async/<int:year>/", async_article),
    path("blog/", include(blog)),
]
