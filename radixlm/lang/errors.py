"""Exceptions of the frontend language."""

from __future__ import annotations


class LangError(RuntimeError):
    """Base class of the frontend language's errors."""


class ProgramError(LangError):
    """An expression of a program failed; `__cause__` holds the backend's own exception."""


class BackendError(LangError):
    """A backend could not serve a request (HTTP error, connection failure, bad response)."""


class UnsupportedFeatureError(LangError, ValueError):
    """The program asks for something its backend cannot honour (an image on a text-only
    model, a regex on an API without constrained decoding, select on a chat-only API...)."""
